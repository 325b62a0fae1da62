"""The command line: parse, call the library, print. ``manage.py`` and the ``a2v`` script call :func:`main`."""

from __future__ import annotations

import sys

import typer

from .errors import A2VError

app = typer.Typer(
    name="a2v",
    help="a2v-search: find human activities (HAKE PaSta part states and verbs) in images and videos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _not_built(name: str) -> None:
    raise typer.Exit(_fail(f"'{name}' is not built yet", code=2))


def _fail(message: str, code: int = 1) -> int:
    typer.echo(f"error: {message}", err=True)
    return code


@app.command()
def ingest() -> None:
    """Compute per-person activity vectors for images and videos and store them."""
    _not_built("ingest")


@app.command()
def search() -> None:
    """Search stored persons by example image, PaSta text, free text, CLIP text or person id."""
    _not_built("search")


@app.command()
def predict() -> None:
    """Print the PaSta, verbs and part flags of the persons in one image; nothing is stored."""
    _not_built("predict")


@app.command()
def stats() -> None:
    """Counts of media, persons, failures, indexes and vector spaces."""
    _not_built("stats")


@app.command()
def doctor() -> None:
    """Check that SQLite and FAISS agree; --repair fixes what is found."""
    _not_built("doctor")


@app.command()
def reindex() -> None:
    """Rebuild the FAISS indexes from SQLite."""
    _not_built("reindex")


@app.command()
def remove() -> None:
    """Remove media (and their persons) from the store."""
    _not_built("remove")


@app.command()
def show() -> None:
    """Draw the persons of an image with their top PaSta and verbs."""
    _not_built("show")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; errors become one line on stderr and a non-zero exit code (2 for usage errors)."""
    try:
        rv = app(args=argv, prog_name="a2v", standalone_mode=False)
    except typer.Abort:
        sys.exit(_fail("aborted", code=130))
    except typer.TyperException as e:  # click's usage errors (exit code 2) and other click exceptions
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        code = getattr(e, "exit_code", 1)
        sys.exit(_fail(f"{message}{hint}", code=code) if message else code)  # no args: help was printed
    except KeyboardInterrupt:
        sys.exit(_fail("interrupted", code=130))
    except A2VError as e:
        sys.exit(_fail(str(e)))
    sys.exit(rv if isinstance(rv, int) else 0)
