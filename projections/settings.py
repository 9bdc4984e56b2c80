"""Channel settings view: the persona each channel uses."""

from __future__ import annotations

from llm_es.domain.events import Event, PersonaSwitched
from llm_es.domain.views import SettingsView, settings_key
from projections.base import View, cached_key, iso

_settings_key = cached_key(settings_key)


class SettingsProjection:
    """`channel.<channel>.settings`: persona and who set it when."""

    name = "settings"
    key_prefix = "channel."
    event_types: frozenset[type[Event]] = frozenset({PersonaSwitched})

    def keys_for(self, event: Event) -> tuple[str, ...]:
        if isinstance(event, PersonaSwitched):
            return (_settings_key(event.channel),)
        return ()

    def apply(self, key: str, view: View | None, event: Event, seq: int) -> View | None:
        if not isinstance(event, PersonaSwitched):
            return view
        settings: SettingsView = {
            "channel": event.channel,
            "persona": event.persona,
            "changed_by": event.user,
            "changed_at": iso(event),
            "seq": seq,
        }
        return dict(settings)

    # Every value is built afresh, so folding in place is the same as applying.
    fold = apply
