#!/usr/bin/env python3
"""Checks that the official OpenAI Python SDK works unmodified against a
running portcullis: model list, a plain completion, a streamed completion
(ending cleanly at `data: [DONE]`) and an error mapped to the SDK's
exception. Exit status 0 when every check passes.

Environment:
  BASE_URL  portcullis address, e.g. http://127.0.0.1:8000 (/v1 is added
            when missing)
  API_KEY   a portcullis API key (`portcullis keys create --name sdk`);
            any text when auth mode is none
  ORIGIN    optional Origin header (needed with auth mode none, where no
            key vouches for a non-browser client)
  MODEL     optional model name (default: the first listed model)

Usage: pip install openai; BASE_URL=... API_KEY=... python3 scripts/openai_sdk_check.py
"""
import os
import sys

try:
    import openai
except ImportError:
    print("SKIP: the openai package is not installed (pip install openai)")
    sys.exit(2)


def main() -> int:
    base = os.environ.get("BASE_URL", "http://127.0.0.1:8000").rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    headers = {"Origin": os.environ["ORIGIN"]} if os.environ.get("ORIGIN") else None
    client = openai.OpenAI(
        base_url=base,
        api_key=os.environ.get("API_KEY", "none"),
        default_headers=headers,
        max_retries=0,
        timeout=30,
    )
    failures = []

    def check(name, fn):
        try:
            detail = fn()
            print(f"ok   {name}: {detail}")
        except Exception as e:  # report every failure, then exit non-zero
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")

    state = {}

    def models():
        ids = [m.id for m in client.models.list()]
        assert ids, "empty model list"
        state["model"] = os.environ.get("MODEL") or ids[0]
        return ids

    def plain():
        r = client.chat.completions.create(
            model=state.get("model", "default"),
            messages=[{"role": "user", "content": "Say hello"}],
        )
        text = r.choices[0].message.content
        assert isinstance(text, str) and text, f"no content in {r!r}"
        return repr(text)

    def streamed():
        stream = client.chat.completions.create(
            model=state.get("model", "default"),
            messages=[{"role": "user", "content": "Say hello slowly"}],
            stream=True,
        )
        parts = []
        chunks = 0
        for chunk in stream:
            chunks += 1
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        text = "".join(parts)
        assert text, "no streamed content"
        return f"{chunks} chunks, {text!r}"

    def error_mapping():
        try:
            client.chat.completions.create(model=state.get("model", "default"), messages=[])
        except openai.BadRequestError as e:
            assert e.status_code == 400, e.status_code
            body = e.body if isinstance(e.body, dict) else {}
            code = body.get("code") or (body.get("error") or {}).get("code")
            assert code == "validation_failed", f"code {code!r} in {e.body!r}"
            return f"BadRequestError 400 {code}"
        raise AssertionError("an empty messages list was accepted")

    check("models.list", models)
    check("chat.completions (plain)", plain)
    check("chat.completions (stream)", streamed)
    check("error mapping", error_mapping)
    print(f"openai {openai.__version__}: {4 - len(failures)}/4 checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
