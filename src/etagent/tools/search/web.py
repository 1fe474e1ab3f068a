"""Web search backends (docs/method.md 2.2): Serper (Google), Bing through Bright Data, a self-hosted
SearXNG instance, and the ``ddgs`` metasearch library.

Each backend is a :class:`~etagent.tools.search.retriever.Retriever`: a query gives a list of hits
as :class:`Doc` objects whose ``id`` is the page URL, ``title`` its title and ``text`` the search
engine's snippet. The search tool formats them ("Page 1: ..."), caches them (the query cache keys
on :attr:`WebSearch.identity`, which never holds a key), reads the pages behind them
(:mod:`etagent.tools.search.pages`) and summarises them (:mod:`etagent.tools.search.summariser`).

What every backend gets from :class:`WebSearch`:

* API keys read from the environment variables its config names, tried in order: a key the
  service rejects (HTTP 401, 402, 403) or that stays rate-limited after its retries hands over to
  the next (a rejected key is tried last from then on). Keys appear in request headers only: never in identities, logs or error texts
  (error texts are scrubbed of them as well).
* Retries with exponential back-off on HTTP 429, 5xx, timeouts and connection errors; a
  ``Retry-After`` header sets the delay.
* A process-wide rate limit per backend instance (requests per second).
* Re-asking a query whose answer had no hits (``empty_retries``; Serper's reference client asks
  twice more).

A backend of your own is a subclass with ``name``, ``config_class`` (a
:class:`~etagent.tools.search.config.WebBackendConfig`) and ``_search_once``; config names it by
dotted path (``search.backend: my_pkg.web:BraveSearch``, settings under ``search.settings``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlencode

import httpx

from etagent.registry import RegistryError
from etagent.tools.search.config import (
    WEB_BACKENDS,
    BingConfig,
    DdgsConfig,
    SearxngConfig,
    SerperConfig,
    WebBackendConfig,
)
from etagent.tools.search.corpus import Doc
from etagent.tools.search.retriever import RetrieverError, RetrieverTimeout

log = logging.getLogger(__name__)

_KEY_SPLIT = re.compile(r"[,\s]+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def read_keys(env_names: list[str]) -> list[str]:
    """The keys the environment variables hold, in order, without duplicates."""
    keys: list[str] = []
    for name in env_names:
        for key in _KEY_SPLIT.split(os.environ.get(name, "")):
            if key and key not in keys:
                keys.append(key)
    return keys


def is_chinese(text: str) -> bool:
    """The reference picks zh/cn or en/us with ``langid``; a Han character decides here."""
    return bool(_CJK.search(text))


class TransientError(RetrieverError):
    """A failure that asking again later may cure (429, 5xx, a timeout, a dropped connection)."""

    def __init__(self, message: str, *, retry_after: float | None = None, timeout: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.timeout = timeout


class KeyRejected(RetrieverError):
    """The service refused this API key (invalid, out of credit, forbidden): try the next one."""


class RateLimiter:
    """At most ``per_s`` requests per second from all threads together (evenly spaced)."""

    def __init__(self, per_s: float | None):
        self.interval = 1.0 / per_s if per_s else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _body(response: httpx.Response, n: int = 200) -> str:
    text = " ".join(response.text.split())
    return text if len(text) <= n else text[:n] + "..."


class WebSearch(ABC):
    """A web search service as a retriever: keys, retries, back-off, rate limit, clear errors."""

    #: the backend's name in errors and in the cache identity
    name: ClassVar[str] = "web"
    config_class: ClassVar[type[WebBackendConfig]] = WebBackendConfig
    #: whether the service needs an API key (then one must be set at start-up)
    needs_key: ClassVar[bool] = False

    def __init__(
        self,
        cfg: WebBackendConfig,
        *,
        keys: list[str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        """``keys`` replace the environment's; ``transport`` replaces the network (tests)."""
        self.cfg = cfg
        self._keys = list(keys) if keys is not None else read_keys(cfg.api_key_env)
        if self.needs_key and not self._keys:
            names = " or ".join(cfg.api_key_env) or "(none configured)"
            raise RetrieverError(
                f"{self.name} search needs an API key: set the environment variable {names} "
                f"(search.{self.name}.api_key_env names the variables)"
            )
        self._refused: set[str] = set()
        self._limiter = RateLimiter(cfg.rate_limit_per_s)
        self._client = httpx.Client(
            timeout=httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 10.0)),
            transport=transport,
            follow_redirects=True,
        )
        self.identity = f"web:{self.name}:{self.describe()}"

    @classmethod
    def from_config(cls, cfg: WebBackendConfig) -> WebSearch:
        return cls(cfg)

    def describe(self) -> str:
        """What decides the results besides the query (endpoint, language, ...): part of the cache
        identity. Never a key."""
        return self.cfg.url

    def __repr__(self) -> str:  # the keys stay out of every repr
        return f"{type(self).__name__}({self.identity!r}, keys={len(self._keys)})"

    # ------------------------------------------------------------------ the one request

    @abstractmethod
    def _search_once(self, query: str, top_k: int, key: str | None) -> list[Doc]:
        """One request with ``key``; raises :class:`TransientError` (ask again later),
        :class:`KeyRejected` (try the next key) or :class:`RetrieverError` (give up)."""

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """An HTTP request whose failures are classified for the retry logic."""
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise TransientError(
                f"{url} did not answer within {self.cfg.timeout_s:g} s", timeout=True
            ) from None
        except httpx.TransportError as e:
            raise TransientError(f"{url} is unreachable ({type(e).__name__}: {e})") from None
        code = response.status_code
        if code == 429:
            raise TransientError(f"{url} is rate limiting (HTTP 429)", retry_after=_retry_after(response))
        if code >= 500:
            raise TransientError(f"{url} answered HTTP {code}: {_body(response)}")
        if code in (401, 402, 403):
            raise KeyRejected(f"{url} refused the request: HTTP {code}: {_body(response)}")
        if code >= 400:
            raise RetrieverError(f"{url} rejected the request: HTTP {code}: {_body(response)}")
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise RetrieverError(f"{response.request.url} did not answer JSON: {_body(response)}") from None

    # ------------------------------------------------------------------ retries and keys

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else self.cfg.backoff_s * 2**attempt
        return min(wait, self.cfg.max_backoff_s)

    def _with_retries(self, query: str, top_k: int, key: str | None) -> list[Doc]:
        attempt = empties = 0
        while True:
            self._limiter.wait()
            try:
                docs = self._search_once(query, top_k, key)
            except TransientError as e:
                if attempt >= self.cfg.retries:
                    raise
                delay = self._delay(attempt, e.retry_after)
                attempt += 1
                log.info("%s search: %s; retry %d in %.1f s", self.name, self._scrub(str(e)), attempt, delay)
                time.sleep(delay)
                continue
            if docs or empties >= self.cfg.empty_retries:
                return docs[:top_k]
            empties += 1

    def _scrub(self, text: str) -> str:
        for key in self._keys:
            text = text.replace(key, "***")
        return text

    def search(self, query: str, top_k: int) -> list[Doc]:
        # keys the service refused go last: a dead key is not asked first on every query
        keys: list[str | None] = [k for k in self._keys if k not in self._refused]
        keys += [k for k in self._keys if k in self._refused]
        keys = keys or [None]
        last: RetrieverError | None = None
        for n, key in enumerate(keys, 1):
            try:
                return self._with_retries(query, top_k, key)
            except (KeyRejected, TransientError) as e:
                last = e
                if isinstance(e, KeyRejected) and key is not None:
                    self._refused.add(key)
                if n < len(keys):
                    log.warning(
                        "%s search: key %d of %d failed (%s); trying the next key",
                        self.name, n, len(keys), self._scrub(str(e)),
                    )  # fmt: skip
            except RetrieverError as e:
                raise RetrieverError(self._scrub(f"{self.name}: {e}")) from None
        assert last is not None
        tried = f"{len(keys)} key{'s' if len(keys) > 1 else ''}, " if self._keys else ""
        message = self._scrub(f"{self.name}: {last} ({tried}{self.cfg.retries} retries each)")
        if isinstance(last, TransientError) and last.timeout:
            raise RetrieverTimeout(message)
        raise RetrieverError(message)

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Doc]]:
        """Each query on its own request, ``concurrency`` at a time; results in query order."""
        if len(queries) <= 1:
            return [self.search(q, top_k) for q in queries]
        with ThreadPoolExecutor(min(self.cfg.concurrency, len(queries))) as pool:
            return list(pool.map(lambda q: self.search(q, top_k), queries))

    def close(self) -> None:
        self._client.close()


def _hits(items: Any, where: str, *, link: str, title: str, text: str) -> list[Doc]:
    """Result objects -> docs (``id`` = URL); entries without a URL are skipped, snippets de-duplicated."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise RetrieverError(f"{where}: expected a list of results, got {type(items).__name__}")
    docs: list[Doc] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get(link), str) or not item[link]:
            continue
        snippet = str(item.get(text) or "").strip()
        if snippet and snippet in seen:
            continue
        seen.add(snippet)
        docs.append(Doc(id=item[link], title=str(item.get(title) or "").strip(), text=snippet))
    return docs


class SerperSearch(WebSearch):
    """Google through Serper: ``POST {"q", "hl", "gl", "num"}`` with ``X-API-KEY``; hits from ``organic``."""

    name = "serper"
    config_class = SerperConfig
    needs_key = True
    cfg: SerperConfig

    def _language(self, query: str) -> tuple[str, str]:
        zh = is_chinese(query)
        return self.cfg.hl or ("zh-cn" if zh else "en"), self.cfg.gl or ("cn" if zh else "us")

    def describe(self) -> str:
        return f"{self.cfg.url}:hl={self.cfg.hl or 'auto'}:gl={self.cfg.gl or 'auto'}"

    def _search_once(self, query: str, top_k: int, key: str | None) -> list[Doc]:
        hl, gl = self._language(query)
        response = self._send(
            "POST",
            self.cfg.url,
            json={"q": query, "hl": hl, "gl": gl, "num": max(10, top_k)},
            headers={"X-API-KEY": key or "", "Content-Type": "application/json"},
        )
        payload = self._json(response)
        if not isinstance(payload, dict):
            raise RetrieverError(f"{self.cfg.url}: expected a JSON object, got {type(payload).__name__}")
        return _hits(payload.get("organic"), self.cfg.url, link="link", title="title", text="snippet")


class BingSearch(WebSearch):
    """Bing through the Bright Data SERP API: ``POST {"zone", "url": bing?q=...&brd_json=1, "format":
    "raw"}`` with a bearer key; hits from the parsed page's ``organic`` (``description`` snippets)."""

    name = "bing"
    config_class = BingConfig
    needs_key = True
    cfg: BingConfig

    def __init__(self, cfg: BingConfig, **kwargs: Any):
        if not cfg.zone:
            raise RetrieverError("bing search needs a Bright Data SERP zone: set search.bing.zone")
        super().__init__(cfg, **kwargs)

    def describe(self) -> str:
        return f"{self.cfg.url}:zone={self.cfg.zone}:cc={self.cfg.cc}:mkt={self.cfg.mkt or 'auto'}"

    def page_url(self, query: str) -> str:
        """The Bing results page Bright Data fetches and parses for ``query``."""
        mkt = self.cfg.mkt or ("zh-CN" if is_chinese(query) else "en-US")
        params = {"q": query, "brd_json": 1, "cc": self.cfg.cc, "mkt": mkt, "setlang": mkt.split("-")[0]}
        return f"{self.cfg.search_url}?{urlencode(params)}"

    def _search_once(self, query: str, top_k: int, key: str | None) -> list[Doc]:
        response = self._send(
            "POST",
            self.cfg.url,
            json={"zone": self.cfg.zone, "url": self.page_url(query), "format": "raw"},
            headers={"Authorization": f"Bearer {key or ''}", "Content-Type": "application/json"},
        )
        try:
            payload = response.json()
        except ValueError:
            raise RetrieverError(
                f"{self.cfg.url} did not answer parsed JSON (is zone {self.cfg.zone!r} a SERP zone? "
                f"brd_json=1 asks for JSON): {_body(response)}"
            ) from None
        if not isinstance(payload, dict):
            raise RetrieverError(f"{self.cfg.url}: expected a JSON object, got {type(payload).__name__}")
        return _hits(payload.get("organic"), self.cfg.url, link="link", title="title", text="description")


class SearxngSearch(WebSearch):
    """A SearXNG instance: ``GET /search?q=...&format=json``; hits from ``results`` (``content`` snippets)."""

    name = "searxng"
    config_class = SearxngConfig
    cfg: SearxngConfig

    def __init__(self, cfg: SearxngConfig, **kwargs: Any):
        if not cfg.url.strip():
            raise RetrieverError("searxng search needs the instance's URL: set search.searxng.url")
        super().__init__(cfg, **kwargs)
        self.endpoint = cfg.url.rstrip("/") + "/search"

    def describe(self) -> str:
        c = self.cfg
        return f"{c.url.rstrip('/')}:lang={c.language}:cat={c.categories}:engines={c.engines or 'default'}:safe={c.safesearch}"

    def _search_once(self, query: str, top_k: int, key: str | None) -> list[Doc]:
        c = self.cfg
        params: dict[str, Any] = {
            "q": query,
            "format": "json",
            "language": c.language,
            "categories": c.categories,
            "safesearch": c.safesearch,
            "pageno": 1,
        }
        if c.engines:
            params["engines"] = c.engines
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = self._send("GET", self.endpoint, params=params, headers=headers)
        except KeyRejected as e:
            raise RetrieverError(
                f"{e}; a SearXNG instance answers 403 when 'json' is missing from search.formats in "
                "its settings.yml"
            ) from None
        payload = self._json(response)
        if not isinstance(payload, dict):
            raise RetrieverError(f"{self.endpoint}: expected a JSON object, got {type(payload).__name__}")
        return _hits(payload.get("results"), self.endpoint, link="url", title="title", text="content")


class DdgsSearch(WebSearch):
    """The ``ddgs`` metasearch library (no key). ``client_factory`` makes the ``DDGS`` client; tests
    inject a fake there, since ddgs cannot be pointed at a local server."""

    name = "ddgs"
    config_class = DdgsConfig
    cfg: DdgsConfig

    def __init__(self, cfg: DdgsConfig, *, client_factory: Callable[[], Any] | None = None, **kwargs: Any):
        try:
            from ddgs import exceptions
        except ImportError:
            raise RetrieverError("the ddgs search backend needs the ddgs package: pip install ddgs") from None
        self._exceptions = exceptions
        super().__init__(cfg, **kwargs)
        self._factory = client_factory or self._client_factory

    def _client_factory(self) -> Any:
        from ddgs import DDGS

        return DDGS(proxy=self.cfg.proxy, timeout=math.ceil(self.cfg.timeout_s))

    def describe(self) -> str:
        c = self.cfg
        return f"region={c.region}:safe={c.safesearch}:engines={c.engines}"

    def _search_once(self, query: str, top_k: int, key: str | None) -> list[Doc]:
        ex = self._exceptions
        c = self.cfg
        try:
            items = self._factory().text(
                query, region=c.region, safesearch=c.safesearch, max_results=top_k, backend=c.engines
            )
        except ex.RatelimitException as e:
            raise TransientError(f"rate limited: {e}") from None
        except ex.TimeoutException as e:
            raise TransientError(f"timed out: {e}", timeout=True) from None
        except ex.DDGSException as e:
            if "no results" in str(e).lower():
                return []
            raise TransientError(f"no engine answered: {e}") from None
        return _hits(list(items or []), "ddgs", link="href", title="title", text="body")


def web_backend_class(name: str) -> Any:
    """The WebSearch class a registered name or dotted path names (imports it)."""
    try:
        cls = WEB_BACKENDS.get(name)
    except RegistryError as e:
        raise ValueError(f"backend: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, WebSearch)):
        raise ValueError(
            f"backend: {name!r} is {cls!r}, not a subclass of etagent.tools.search.web.WebSearch"
        )
    return cls
