"""The plugin contract: the hooks a plugin may implement. Nothing else lives here.

A plugin is a module (or object) with functions marked ``@gateway.hookimpl`` whose names match
the specifications below, announced through the ``pat_gateway`` entry-point group::

    [project.entry-points.pat_gateway]
    my_pump = "my_vendor_package.plugin"

Each hook receives the :class:`~gateway.registry.Registry` and only *registers* things into it;
all I/O happens later, in the driver, sink or emulator objects the registered factories build.

The module also declares the plugin API it is written for, ``PAT_GATEWAY_API = "1.1"`` (see
``gateway.PLUGIN_API_VERSION``). The plugin manager calls the hooks through pluggy's hook
callers and runs ``check_pending()``: a function marked ``@hookimpl`` whose name is no hook
below (a misspelt one) refuses the plugin, by name and distribution, as an incompatible API
version does; the other plugins load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .registry import Registry

PROJECT = "pat_gateway"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def pat_gateway_register_drivers(registry: Registry) -> None:
    """Register instrument drivers with ``registry.add_driver(name, factory, options_model)``.

    ``factory(options, context)`` returns a :class:`~gateway.api.Driver`; ``options`` is an
    instance of ``options_model`` validated from the instrument's ``options:`` block.
    """


@hookspec
def pat_gateway_register_sinks(registry: Registry) -> None:
    """Register upstream sinks with ``registry.add_sink(name, factory, options_model)``.

    ``factory(options, context)`` returns a :class:`~gateway.api.Sink`, which receives every
    batch of samples after it has been committed to the durable store.
    """


@hookspec
def pat_gateway_register_processors(registry: Registry) -> None:
    """Register processors with ``registry.add_processor(name, factory, options_model)``.

    ``factory(options, context)`` returns a :class:`~gateway.api.Processor`, which derives new
    signals from configured ones (for example a chemometric model turning a spectrum into
    concentrations); ``name`` is the ``type:`` of an entry under ``processors:``.
    """


@hookspec
def pat_gateway_register_commands(registry: Registry) -> None:
    """Register ``patgw`` sub-commands with ``registry.add_command(name, configure, description)``.

    ``configure(parser)`` receives the sub-command's :class:`argparse.ArgumentParser`, adds its
    arguments (or sub-commands of its own) and returns the handler, ``handler(args) -> int``
    (the exit code: 0 success, 2 a usage or input error with one line per problem on standard
    error). Built-in commands cannot be replaced. Example: the soft-sensor plugin's
    ``patgw model fit``.
    """


@hookspec
def pat_gateway_register_model_kinds(registry: Registry) -> None:
    """Register kinds of model file with ``registry.add_model_kind(name, fit=..., show=...,
    check=..., description=...)``.

    ``patgw model fit NAME ...`` fits one (``pls`` when NAME is omitted); ``patgw model show
    FILE`` and ``check FILE`` run the kind named by the file's ``"kind"`` member (``pls`` when it
    has none). Each of ``fit``, ``show`` and ``check`` receives its
    :class:`argparse.ArgumentParser`, adds its arguments and returns the handler,
    ``handler(args) -> int``. Example: the soft sensor's ``pls``.
    """


@hookspec
def pat_gateway_register_emulators(registry: Registry) -> None:
    """Register emulated instruments with ``registry.add_emulator(name, factory, options_model)``.

    ``factory(options, context)`` returns a :class:`~gateway.api.Emulator`: an async context
    manager serving a real wire protocol on a real transport, started before the instruments.
    """
