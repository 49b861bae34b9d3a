"""The ``synchuman`` command line: a client of the core library (:mod:`synchuman`) and of the services.

:mod:`synchuman_cli.main` parses the command line; each subcommand is a module of
:mod:`synchuman_cli.commands`.
It lives outside :mod:`synchuman` so that the core imports no service, gateway or CLI code.
"""
