"""The ``cstore`` command line: one module per area, each mounting its commands on :func:`main`.

Every command reads configuration the same way (flags > ``CSTORE_*`` > config file > defaults) and
turns cstore errors into one clear line. Installed packages may add commands through the
``cstore.cli`` entry-point group (the development package adds ``cstore local`` and ``cstore eval``).
"""
from importlib.metadata import entry_points

from cstore.cli import _bench, _feedback, _governance, _model, _schema, _security, _status, _worker
from cstore.cli._app import CliContext, echo_json, json_option, log_format_option, main

for _module in (_schema, _model, _feedback, _worker, _status, _security, _bench):
    for _command in _module.COMMANDS:
        main.add_command(_command)
for _command in _governance.COMMANDS:  # the lifecycle commands live under `cstore model`
    _model.model.add_command(_command)
for _plugin in entry_points(group="cstore.cli"):
    main.add_command(_plugin.load())

__all__ = ["CliContext", "echo_json", "json_option", "log_format_option", "main"]
