"""Email through one SMTP relay, via the outbox (``plugins.mail.mailer``).

A library of the plugins layer, not a plugin module: the dashboard (account mail) and
the fair-use monitor (suspension notices) queue mail with ``mailer.enqueue``; the
dashboard plugin claims ``[smtp]`` and registers the ``Mailer`` service that sends it.
"""
