"""Typed node configuration: one YAML file plus ``AINODE__SECTION__KEY`` environment
overrides, split by section (:mod:`.node`, :mod:`.peers`, :mod:`.sections`), assembled in
:mod:`.model`.

Invalid configuration raises :class:`ConfigError` whose message names each offending key
(``node.dicom_port: ...``), so a PACS administrator can fix the file without reading code.
"""

from node.settings.base import (
    DEID_KEY_ENV,
    DEID_OPTIONS,
    DEID_PROFILES,
    ENV_PREFIX,
    ENV_SEPARATOR,
    NOTIFY_PREFIX,
    PEER_NAME,
    RESEARCH_PREFIX,
    ConfigError,
    DeidOption,
    check_http_url,
)
from node.settings.model import (
    Settings,
    dump_settings,
    load_settings,
)
from node.settings.node import (
    NodeSection,
    StoreSection,
    TlsSection,
)
from node.settings.peers import (
    Notification,
    Peer,
    Research,
)
from node.settings.sections import (
    AuditSection,
    CodeSpec,
    DriftSection,
    EgressSection,
    InferenceSection,
    MatchRule,
    Pipeline,
    RetentionSection,
    SegmentSpec,
    SeriesSection,
    UrgencyRule,
)

__all__ = [
    "DEID_KEY_ENV",
    "DEID_OPTIONS",
    "DEID_PROFILES",
    "ENV_PREFIX",
    "ENV_SEPARATOR",
    "NOTIFY_PREFIX",
    "PEER_NAME",
    "RESEARCH_PREFIX",
    "AuditSection",
    "CodeSpec",
    "ConfigError",
    "DeidOption",
    "DriftSection",
    "EgressSection",
    "InferenceSection",
    "MatchRule",
    "NodeSection",
    "Notification",
    "Peer",
    "Pipeline",
    "Research",
    "RetentionSection",
    "SegmentSpec",
    "SeriesSection",
    "Settings",
    "StoreSection",
    "TlsSection",
    "UrgencyRule",
    "check_http_url",
    "dump_settings",
    "load_settings",
]
