"""Process start-up shared by every entry point: settings or a clear exit 2, then logging."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping

from shared.config import Settings, load_settings
from shared.errors import ConfigError
from shared.logs import configure_logging, register_secrets

EXIT_CONFIG = 2


def start(
    service: str,
    needs: Iterable[str],
    environ: Mapping[str, str] | None = None,
    *,
    log: bool = True,
) -> Settings:
    """Load settings for `service` (exit 2 naming every bad variable), then configure logging."""
    try:
        settings = load_settings(os.environ if environ is None else environ, needs)
    except ConfigError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    register_secrets(settings.secrets())
    if log:
        configure_logging(settings.log_level, service)
    for warning in settings.warnings:
        logging.getLogger(service).warning(warning)
    return settings
