"""A plugin that adds a subcommand to the command line (the ``register_commands`` hook)."""
from gateway import sdk


async def _hello(args, config):
    # An async command: the CLI runs it with asyncio.run. It sees the loaded config.
    models = ",".join(m.name for m in config.models)
    print(f"hello {args.name} (models: {models})")


@sdk.hookimpl
def register_commands(subparsers):
    cmd = subparsers.add_parser("hello", help="say hello (a plugin's command)")
    cmd.add_argument("--name", default="world")
    cmd.set_defaults(func=_hello)
