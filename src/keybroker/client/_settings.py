"""A pydantic-settings source, so ``BaseSettings`` fields can come from keybroker.

::

    class Settings(BaseSettings):
        openai_api_key: SecretStr
        db_password: SecretStr = Field(json_schema_extra={"keybroker": "db/main"})

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, *rest):
            return (init_settings, env_settings, KeybrokerSettingsSource(settings_cls, Client()))

A field named ``openai_api_key`` is looked up as the secret ``openai_api_key`` or
``OPENAI_API_KEY`` (or its alias); ``json_schema_extra={"keybroker": "NAME"}`` names it exactly.
All fields are fetched in one batch request; missing secrets are left to the other sources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from keybroker.crypto import SecretValue

if TYPE_CHECKING:
    from keybroker.client._sync import Client

__all__ = ["KeybrokerSettingsSource"]


def _candidates(field_name: str, field: FieldInfo) -> list[str]:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("keybroker"), str):
        return [str(extra["keybroker"])]
    names = [field.alias] if field.alias else []
    names += [field_name, field_name.upper()]
    return list(dict.fromkeys(names))


class KeybrokerSettingsSource(PydanticBaseSettingsSource):
    """Reads settings fields from keybroker through a :class:`keybroker.Client` (so the client's
    cache, resolution chain and errors apply). Raises what :meth:`Client.get_many` raises,
    except that missing secrets are skipped."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        client: Client,
        *,
        project: str | None = None,
        environment: str | None = None,
    ) -> None:
        super().__init__(settings_cls)
        self.client = client
        self.project = project
        self.environment = environment
        self._values: dict[str, SecretValue] | None = None

    def _load(self) -> dict[str, SecretValue]:
        if self._values is None:
            wanted: list[str] = []
            for name, f in self.settings_cls.model_fields.items():
                wanted += _candidates(name, f)
            self._values = self.client.get_many(
                wanted, project=self.project, environment=self.environment, ignore_missing=True
            )
        return self._values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        values = self._load()
        for n in _candidates(field_name, field):
            if n in values:
                return values[n].reveal(), field_name, self.field_is_complex(field)
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, f in self.settings_cls.model_fields.items():
            value, key, complex_ = self.get_field_value(f, name)
            value = self.prepare_field_value(name, f, value, complex_)
            if value is not None:
                out[key] = value
        return out

    def __repr__(self) -> str:
        return f"KeybrokerSettingsSource(project={self.project!r}, environment={self.environment!r})"
