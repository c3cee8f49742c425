"""The one didact resource: the installation's settings, editable in the launchpad.

``DidactResource`` is generated from :class:`~didact_core.config.Settings`: one field per
setting, same name, secrets left out (they stay in the environment), tuples as lists and
``bool | CA path`` as text.  Its defaults come from a *lenient* read of the ``DIDACT_*``
variables, so a bad value never stops the code location from loading;
:meth:`DidactResource.settings` (called in a run, a sensor or a schedule) reads them strictly
and raises the clear :class:`~didact_core.config.SettingsError`.  A value set in the
launchpad or in ``Definitions`` wins over its variable.
"""

from __future__ import annotations

import types
import typing

import dagster as dg
from pydantic import Field, field_validator

from didact_core.config import SECRET_FIELDS, Settings
from didact_core.data.warehouse import Warehouse

#: the environment's settings at load time, bad values replaced by their defaults
ENV_DEFAULTS = Settings.from_env_lenient()


def _config_type(annotation) -> type:
    """The Dagster config type of a Settings field type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        return list[args[0]]
    if type(None) in args:  # float | None → Optional (Dagster's Noneable)
        return typing.Optional[next(a for a in args if a is not type(None))]  # noqa: UP045
    if args:  # bool | str (a boolean word or a CA bundle path) travels as text
        return str
    return annotation


def _resource_fields() -> dict:
    ns: dict = {"__annotations__": {}}
    for name, info in Settings.model_fields.items():
        if name in SECRET_FIELDS:
            continue
        typ = _config_type(info.annotation)
        value = getattr(ENV_DEFAULTS, name)
        if typ is str and isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, tuple):
            value = list(value)
        ns["__annotations__"][name] = typ
        doc = f"{info.description or name.replace('_', ' ')} (default from env DIDACT_{name.upper()})"
        ns[name] = Field(default=value, description=doc)
    # the home as it resolved where the code location loaded (runs may start elsewhere)
    ns["home"] = Field(default=str(ENV_DEFAULTS.home_path), description="the didact home folder (env DIDACT_HOME)")
    return ns


class _DidactResourceBase(dg.ConfigurableResource):
    """Where didact keeps its state and where telemetry comes from (fields: see Settings)."""

    @field_validator("prometheus_tls_verify", "redfish_tls_verify", mode="before", check_fields=False)
    @classmethod
    def _bool_as_text(cls, v):
        # a Settings value (True/False) given to the resource: the text field takes it as a word
        return ("true" if v else "false") if isinstance(v, bool) else v

    def settings(self) -> Settings:
        """The run's settings: the launchpad's values where they differ from the environment's,
        the ``DIDACT_*`` variables (read strictly: SettingsError on a bad one) for the rest."""
        changed = {
            k: v for k, v in self.model_dump().items() if k == "home" or v != RESOURCE_DEFAULTS.get(k, v)
        }
        return Settings.from_env(**changed)

    def warehouse(self) -> Warehouse:
        s = self.settings()
        return Warehouse(s.home_path, s.retention_versions)


DidactResource = types.new_class(
    "DidactResource", (_DidactResourceBase,), exec_body=lambda ns: ns.update(_resource_fields())
)
DidactResource.__module__ = __name__
DidactResource.__doc__ = _DidactResourceBase.__doc__
#: the resource's defaults (what "unchanged in the launchpad" means)
RESOURCE_DEFAULTS = {k: f.default for k, f in DidactResource.model_fields.items()}
