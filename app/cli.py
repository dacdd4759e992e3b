"""``hush serve``: the server's command, plugged into the ``hush`` command line (``hush.commands``)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from pydantic import ValidationError

from model_store.settings import describe_validation_error

logger = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (default: HUSH_SERVER__HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: HUSH_SERVER__PORT).")] = None,
) -> None:
    """Serve the OpenAI-compatible API on the model store (HUSH_STORE__ROOT)."""
    import uvicorn

    from app.main import create_app
    from app.settings import ServerSettings

    settings = ServerSettings()
    overrides = {key: value for key, value in {"host": host, "port": port}.items() if value is not None}
    try:  # validated like the environment's values, before anything starts
        server = type(settings.server).model_validate({**settings.server.model_dump(), **overrides})
    except ValidationError as error:
        options = describe_validation_error(error, lambda loc: "--" + ".".join(map(str, loc)), separator=" ")
        raise typer.BadParameter(options) from None
    settings = settings.model_copy(update={"server": server})
    if settings.server.host not in _LOOPBACK and not settings.server.api_keys:
        logger.warning(
            "listening on %s without API keys: anyone who can reach it can use it", settings.server.host
        )
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the logging the hush command set up
    )


def register(cli: typer.Typer) -> None:
    """Add the server's commands to the ``hush`` command line."""
    cli.command("serve")(serve)
