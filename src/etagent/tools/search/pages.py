"""Reading the pages behind web search hits (the reference's "SDS" variant, docs/method.md 2.2).

For each of the top hits: fetch the URL (a per-page deadline, a size cap, http(s) only, no
private or loopback addresses unless allowed, redirects checked the same way), check the content
type, extract the main text (trafilatura for HTML, pypdf for PDF, plain text as it is), and keep
the window of ``window_chars`` on each side of the sentence that best matches the hit's snippet
(word-set F1 above ``match_threshold``), else the page's first ``fallback_chars``. Extracted text
is cached by URL (:class:`~etagent.tools.search.cache.PageCache`), failures for a while too.

A page that cannot be read never fails the search: its :class:`Page` carries the reason
(``error``), which the search tool shows the model next to the snippet.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from etagent.tools.search.cache import PageCache
from etagent.tools.search.config import PageReaderConfig
from etagent.tools.search.corpus import Doc

log = logging.getLogger(__name__)

_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_PDF_TYPES = {"application/pdf", "application/x-pdf"}
_TEXT_TYPES = {"text/plain", "text/markdown"}
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n\s*")


class PageError(RuntimeError):
    """A page could not be read; the message is shown to the model."""


@dataclass
class Page:
    """What was read behind one hit. ``text`` is the window around the snippet ("" on failure)."""

    url: str
    title: str
    snippet: str
    text: str = ""
    kind: str = ""  # html, pdf or text
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict[str, object]:
        """A short account for the trajectory's tool-call record."""
        out: dict[str, object] = {"url": self.url, "status": "ok" if self.ok else "error"}
        if self.ok:
            out.update(kind=self.kind, chars=len(self.text), cached=self.cached)
        else:
            out["error"] = self.error
        return out


# ------------------------------------------------------------------------- the snippet window


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def word_f1(a: set[str], b: set[str]) -> float:
    """F1 of two word sets (the reference's sentence-to-snippet match)."""
    common = len(a & b)
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: text split after . ! ? (and their CJK forms) and at line breaks."""
    spans = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if text[start : m.start()].strip():
            spans.append((start, m.start()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def snippet_window(
    text: str, snippet: str, *, window_chars: int = 3000, fallback_chars: int = 6000, threshold: float = 0.2
) -> str:
    """The text around the sentence that best matches ``snippet``: ``window_chars`` on each side.
    Without a sentence at ``threshold`` or above, the first ``fallback_chars``."""
    target = words(snippet)
    best, best_span = 0.0, None
    if target:
        for start, end in sentence_spans(text):
            score = word_f1(words(text[start:end]), target)
            if score > best:
                best, best_span = score, (start, end)
    if best_span is None or best < threshold:
        return text[:fallback_chars].strip()
    start, end = best_span
    return text[max(0, start - window_chars) : min(len(text), end + window_chars)].strip()


# ------------------------------------------------------------------------- extraction


def extract_html(data: bytes, url: str = "") -> str:
    """The main text of an HTML page (trafilatura; all visible text when it finds no main part)."""
    try:
        import trafilatura
    except ImportError:
        raise PageError("reading HTML pages needs trafilatura: pip install trafilatura") from None
    try:
        text = trafilatura.extract(
            data, url=url or None, include_comments=False, include_tables=True, favor_recall=True
        )
        if not text or not text.strip():
            text = trafilatura.html2txt(data)
    except Exception as e:  # a parser failure on a broken page is that page's problem only
        raise PageError(f"could not extract text from the HTML ({type(e).__name__}: {e})") from None
    return text or ""


def extract_pdf(data: bytes, max_pages: int = 20) -> str:
    """The text of a PDF's first ``max_pages`` pages (pypdf)."""
    try:
        from pypdf import PdfReader
    except ImportError:
        raise PageError("reading PDF pages needs pypdf: pip install pypdf") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            reader.decrypt("")
        parts = [page.extract_text() or "" for page in reader.pages[:max_pages]]
    except Exception as e:
        raise PageError(f"could not read the PDF ({type(e).__name__}: {e})") from None
    return "\n".join(parts)


def _kind(content_type: str, head: bytes) -> str | None:
    if content_type in _HTML_TYPES:
        return "html"
    if content_type in _PDF_TYPES:
        return "pdf"
    if content_type in _TEXT_TYPES:
        return "text"
    if content_type in ("", "application/octet-stream", "binary/octet-stream"):  # servers that do not say
        start = head.lstrip()[:64].lower()
        if start.startswith(b"%pdf-"):
            return "pdf"
        if start.startswith((b"<!doctype html", b"<html")):
            return "html"
    return None


def _blocked_address(host: str) -> bool:
    """True when ``host`` is, or resolves to, a loopback, private, link-local or reserved address."""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False  # unresolvable: the request itself fails with a clear error
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return any(
        a.is_private
        or a.is_loopback
        or a.is_link_local
        or a.is_reserved
        or a.is_multicast
        or a.is_unspecified
        for a in addresses
    )


# ------------------------------------------------------------------------- the reader


class PageReader:
    """Fetches and extracts pages, concurrently, through the page cache."""

    def __init__(
        self,
        cfg: PageReaderConfig,
        *,
        cache: PageCache | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.cfg = cfg
        self.cache = cache
        self._client = httpx.Client(
            timeout=httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 10.0)),
            follow_redirects=True,
            max_redirects=5,
            headers={
                "User-Agent": cfg.user_agent,
                "Accept": "text/html,application/xhtml+xml,application/pdf,text/plain;q=0.9,*/*;q=0.5",
            },
            event_hooks={"request": [self._check_request]},
            transport=transport,
        )

    @classmethod
    def from_config(cls, cfg: PageReaderConfig) -> PageReader:
        return cls(cfg, cache=PageCache(cfg.cache_path) if cfg.cache else None)

    def _check_request(self, request: httpx.Request) -> None:
        """Every request, redirects included: http(s) only, and no internal addresses unless allowed."""
        if request.url.scheme not in ("http", "https"):
            raise PageError(f"only http and https pages are read, not {request.url.scheme}:")
        if not self.cfg.allow_private_hosts and _blocked_address(request.url.host):
            raise PageError(
                f"{request.url.host} is a private or local address (search.pages.allow_private_hosts)"
            )

    # -- one page

    def _download(self, url: str) -> tuple[str, bytes, bool]:
        """(kind, body, cut) of ``url``; raises PageError."""
        deadline = time.monotonic() + self.cfg.timeout_s
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise PageError(f"only http and https pages are read, not {scheme or 'a URL without scheme'}")
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise PageError(f"HTTP {response.status_code} {response.reason_phrase}".strip())
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                length = response.headers.get("content-length", "")
                body = bytearray()
                cut = False
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.cfg.max_bytes:
                        cut = True
                        del body[self.cfg.max_bytes :]
                        break
                    if time.monotonic() > deadline:
                        raise PageError(f"the page did not arrive within {self.cfg.timeout_s:g} s")
        except httpx.TimeoutException:
            raise PageError(f"no answer within {self.cfg.timeout_s:g} s") from None
        except httpx.TooManyRedirects:
            raise PageError("too many redirects") from None
        except httpx.HTTPError as e:
            raise PageError(f"{type(e).__name__}: {e}") from None
        kind = _kind(content_type, bytes(body[:1024]))
        if kind is None:
            raise PageError(f"unsupported content type {content_type!r}")
        if kind == "pdf" and (cut or (length.isdigit() and int(length) > self.cfg.max_bytes)):
            raise PageError(f"the PDF is larger than {self.cfg.max_bytes} bytes")
        return kind, bytes(body), cut

    def _extract(self, url: str) -> tuple[str, str]:
        kind, body, _ = self._download(url)
        if kind == "html":
            text = extract_html(body, url)
        elif kind == "pdf":
            text = extract_pdf(body, self.cfg.pdf_max_pages)
        else:
            text = body.decode("utf-8", errors="replace")
        text = text.strip()
        if not text:
            raise PageError(f"no text found in the {kind.upper()} page")
        return kind, text[: self.cfg.max_text_chars]

    def page_text(self, url: str) -> tuple[str, str, bool]:
        """(kind, text, cached) of a page, through the cache; raises PageError."""
        if self.cache is not None:
            try:
                hit = self.cache.get(url, self.cfg.failure_ttl_s)
            except Exception as e:  # a broken cache must not break reading
                log.warning("page cache read failed (%s); reading without it", e)
                hit = None
            if hit is not None:
                kind, text, error = hit
                if error is not None:
                    raise PageError(error)
                return kind, text, True
        try:
            kind, text = self._extract(url)
        except PageError as e:
            self._cache_put(url, "", "", str(e))
            raise
        self._cache_put(url, kind, text, None)
        return kind, text, False

    def _cache_put(self, url: str, kind: str, text: str, error: str | None) -> None:
        if self.cache is None or (error is not None and self.cfg.failure_ttl_s <= 0):
            return
        try:
            self.cache.put(url, kind, text, error)
        except Exception as e:
            log.warning("page cache write failed: %s", e)

    def read_one(self, doc: Doc) -> Page:
        """The page behind one hit (``doc.id`` is its URL); failures are in ``Page.error``."""
        page = Page(url=doc.id, title=doc.title, snippet=doc.text)
        try:
            page.kind, text, page.cached = self.page_text(doc.id)
        except PageError as e:
            page.error = str(e)
            log.info("page %s not read: %s", doc.id, e)
            return page
        except Exception as e:  # a bug in an extractor must not fail the search
            page.error = f"{type(e).__name__}: {e}"
            log.warning("page %s not read: %s", doc.id, page.error)
            return page
        c = self.cfg
        page.text = snippet_window(
            text,
            doc.text,
            window_chars=c.window_chars,
            fallback_chars=c.fallback_chars,
            threshold=c.match_threshold,
        )
        return page

    def read(self, docs: list[Doc]) -> list[Page]:
        """The pages behind the first ``max_pages`` hits, fetched concurrently, in hit order."""
        todo = docs[: self.cfg.max_pages] if self.cfg.max_pages else list(docs)
        if len(todo) <= 1:
            return [self.read_one(d) for d in todo]
        with ThreadPoolExecutor(
            min(self.cfg.concurrency, len(todo)), thread_name_prefix="etagent-page"
        ) as pool:
            return list(pool.map(self.read_one, todo))

    def close(self) -> None:
        self._client.close()
        if self.cache is not None:
            self.cache.close()
