"""LangChain models over a guarded model: `GuardedChatModel` (chat) and `GuardedLLM` (plain
completion), each over a local `featureguard.Guard` or a featureguard server's URL.

    from featureguard.integrations.langchain import GuardedChatModel
    chat = GuardedChatModel(guard=guard)                       # in process
    chat = GuardedChatModel(base_url="http://localhost:8000")  # a `featureguard serve`
    msg = (prompt | chat).invoke({...})
    msg.response_metadata["finish_reason"]   # "content_filter" when a policy blocked the reply
    msg.response_metadata["featureguard"]    # blocked, blocked_by, policies, triggers, request_id

Needs the `langchain` extra (langchain-core and httpx).
"""

try:
    import httpx  # noqa: F401
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised with the modules hidden
    raise ImportError(
        "featureguard.integrations.langchain needs langchain-core and httpx: "
        "pip install 'featureguard[langchain]'"
    ) from exc

from featureguard.integrations.langchain.chat_model import GuardedChatModel
from featureguard.integrations.langchain.llm import GuardedLLM

__all__ = ["GuardedChatModel", "GuardedLLM"]
