"""The AllYouCanToken gateway core. Module map (imports run gateway <- plugins <- dashboard;
plugins import only :mod:`gateway.sdk`):

Public surface and wiring (top level)
  sdk            the plugins' one import: base classes, Protocols, re-exports
  hookspecs      the plugin hooks, each documented
  types, errors  Chunk, Usage, GenerationRequest, Principal; OpenAI-style APIError
  config         the TOML file as typed sections
  app, cli       the Tornado application and process wiring; the command line
  runtime        Gateway: one process's backends, limiters, services, dispatcher
  plugin_manager loads built-in and external plugins alike
  model_workers  supervised model worker processes (local runtimes run there)
  children       child processes that die with the gateway
  background     background tasks; datadir: the data folder's checks

http/     the edge: guard (limits, framing), lean (the hot path), headerparse,
          requestid, accesslog, net, drain, sse (the SSE writer), tornado_compat
          (the only module that touches Tornado's internals)
handlers/ one per API: openai (models, chat, completions), ws, embeddings, ops
relay/    pipeline (validate, build, admit), validation, streaming (Generation),
          chunks, usage_recorder (rollups in memory, flushed in batches),
          tier_policy; the fair scheduler: fair_queue, dispatch, capacity_shares
store/    all MongoDB access, one repository per concern; embedded_db (the wire
          server launcher) and mongoeco_compat (its one patched internal)
obs/      metrics (Prometheus), logformat, logredact
"""
