"""The inference service: DICOM in (C-STORE, STOW-RS) → apps → SEG/SR/SC out, a human in the loop, a trace.

See docs/service.md.

Public API
----------
``Service(ws, config)``
    ``start()`` / ``stop()``: receives studies through the workspace's intake, completes each after
    a quiet period, routes its series to the apps whose rules accept them, runs them from a
    persistent queue on a worker pool, and sends the results to the destinations with retries and
    a dead letter.
``ServiceConfig`` (``service.toml``), ``load_service_config``, ``CONFIG_TEMPLATE``
    The typed settings: receive, review, workers, delivery, apps, destinations.
``Review(ws)``
    ``list``, ``show``, ``accept``, ``correct``, ``reject``: the radiologist's decision on each proposal.
``Pipeline``, ``Queue``
    The steps without threads and the SQLite queue (for tools and tests).
``process_files``, ``service_status``, ``retry_dead``
    One-shot processing of files; what the queue holds; dead letters back in the queue.
``trace``, ``trace_lines``
    Which model produced an output from which images, where it went, who decided.
``audit_messages``, ``audit_message``, ``export_audit_xml``
    The service's audit entries as DICOM PS3.15 A.5 audit messages (XML).
``ServiceError``
"""

from sobre.service._atna import EXPORTED_ACTIONS, audit_message, audit_messages, export_audit_xml
from sobre.service._config import (
    CONFIG_NAME, AppSettings, DeliverySettings, Destination, ReceiveSettings, ReviewSettings, ServiceConfig,
    WorkerSettings, load_service_config,
)
from sobre.service._config import TEMPLATE as CONFIG_TEMPLATE
from sobre.service._pipeline import Pipeline, RouteOutcome, ServiceError
from sobre.service._queue import Queue
from sobre.service._review import Review
from sobre.service._service import Service, process_files, retry_dead, service_status
from sobre.service._trace import trace, trace_lines
from sobre.service._uids import derived_uid

__all__ = [
    "Service", "ServiceConfig", "ReceiveSettings", "ReviewSettings", "WorkerSettings", "DeliverySettings",
    "AppSettings", "Destination", "load_service_config", "CONFIG_NAME", "CONFIG_TEMPLATE",
    "Review", "Pipeline", "RouteOutcome", "Queue", "ServiceError",
    "process_files", "service_status", "retry_dead", "trace", "trace_lines",
    "audit_messages", "audit_message", "export_audit_xml", "EXPORTED_ACTIONS", "derived_uid",
]
