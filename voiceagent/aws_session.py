"""The botocore session a process makes its AWS clients from, let go once they exist.

botocore's data loader keeps every file it has read for as long as the loader lives, and the
session's endpoint resolver keeps ``endpoints.json``: ~10 MB of dicts per server process, of
which the clients need ~2 MB (their service models and endpoint rules) once they exist.
``endpoints.json`` alone is ~8 MB and is read only while a client is created. A server makes
its two clients (DynamoDB, Bedrock's endpoint resolution) at start-up, so a session whose
loader keeps nothing, dropped once those clients exist, leaves only what they hold: measured
10.4 -> 2.3 MB of heap a process (benchmarks/RESULTS.md, issue 20). Each later client reads
the files again (a few milliseconds); a server makes none.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import botocore.loaders
import botocore.parsers
import botocore.session


class _KeepNothing(dict[Any, Any]):
    """The loader's cache, keeping nothing. botocore's ``instance_cache`` (every cached
    loader method) reads and writes ``self._cache`` as its documented contract."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class StartupSession:
    """One session lent to the clients a runtime makes at start-up (the store's, the model's
    endpoint resolution), so the AWS config is read and botocore's data parsed once, then
    let go (``release``) so that nothing keeps it: the code it is handed to holds this
    lender, never the session itself."""

    def __init__(self) -> None:
        self._session: botocore.session.Session | None = None
        self._lock = threading.Lock()       # two worker threads asking at once get one

    def get(self) -> botocore.session.Session:
        """Blocking, the first time (see ``new_session``); call it in a worker thread and
        keep the session no longer than the function that asked."""
        with self._lock:
            if self._session is None:
                self._session = new_session()
            return self._session

    def release(self) -> None:
        with self._lock:
            self._session = None


def session_from(lender: StartupSession | None) -> botocore.session.Session:
    """Blocking: the lender's session, else one of its own for the caller alone."""
    return lender.get() if lender is not None else new_session()


def new_session() -> botocore.session.Session:
    """Blocking (reads the AWS config): a botocore session as boto3's, except that its data
    loader keeps no file it read. Hold it only while clients are created from it."""
    session = botocore.session.Session()
    loader = botocore.loaders.create_loader(session.get_config_variable("data_path"))
    loader._cache = _KeepNothing()
    session.register_component("data_loader", loader)
    # botocore makes a parser for every response, and by default each parser keeps its own
    # bound method as its blob parser: a cycle a request (/twiml's session read, every
    # query), freed only by a middle collection, minutes apart under load
    # (``voiceagent.app.heap``). Its default is this function; given, there is no cycle.
    parsers = botocore.parsers.ResponseParserFactory()
    parsers.set_parser_defaults(blob_parser=base64.b64decode)
    session.register_component("response_parser_factory", parsers)
    return session
