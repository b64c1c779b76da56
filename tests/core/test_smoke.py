from keybroker.core import Scope


def test_put_get_round_trip(secrets, me) -> None:  # type: ignore[no-untyped-def]
    secrets.put(me, Scope(), "OPENAI_API_KEY", "sk-smoke-1")
    assert secrets.get(me, Scope(), "OPENAI_API_KEY").value.reveal() == "sk-smoke-1"
