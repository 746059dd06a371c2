#!/usr/bin/env python3
"""Checks that the official OpenAI Python SDK works unmodified against a
running portcullis, on every route the relay serves:

- models.list, models.retrieve (the first listed model, a listed id
  holding a `/` when there is one, and an unknown id as NotFoundError);
- chat.completions.create (plain; stream=True with
  stream_options.include_usage, ending cleanly at `data: [DONE]`; stream=True
  without it, where no usage chunk may reach the client; the
  chat.completions.stream() helper, or beta.chat.completions.stream() in
  older SDKs);
- completions.create (plain and stream=True);
- embeddings.create (a list of two inputs);
- responses.create (plain and stream=True) and the responses.stream()
  helper, and a streamed response closed early by the client;
- errors: a request portcullis refuses (BadRequestError
  `validation_failed`), a request the model server refuses (with
  REFUSE_WORD set: BadRequestError holding the upstream's message, on a
  client with the SDK's default retries), an unknown /v1 path
  (NotFoundError naming it);
- vendor parameters (extra_body top_k and grammar) accepted.

It prints one line per check (`ok`, `FAIL` or `skip` when the installed SDK
lacks a helper) and `openai VERSION: P/T checks passed`; exit status 0 when
every check passes. What the model server saw (a single request for the
refusal, the vendor parameters byte for byte, the early close) can only be
checked on its side: tests/openai_sdk.rs does that with the fake upstream,
using the words below and the `vendor-body:` line (the request body the SDK
sent, in hex).

Environment:
  BASE_URL     portcullis address, e.g. http://127.0.0.1:8000 (/v1 is added
               when missing)
  API_KEY      a portcullis API key (`portcullis keys create --name sdk`);
               any text when auth mode is none
  ORIGIN       optional Origin header (needed with auth mode none, where no
               key vouches for a non-browser client)
  MODEL        optional model name (default: the first listed model)
  REFUSE_WORD  optional: a word that makes the model server answer 400
               with REFUSE_MESSAGE (a fake upstream's steering word); the
               refusal check is skipped without it
  REFUSE_MESSAGE  the message that refusal carries
  CANCEL_WORD  optional word sent in the early-closed responses stream
               (default "cancel"), so the model server can tell which call
               it was

Usage: pip install openai; BASE_URL=... API_KEY=... python3 scripts/openai_sdk_check.py
"""
import os
import sys

try:
    import httpx
    import openai
except ImportError:
    print("SKIP: the openai package is not installed (pip install openai)")
    sys.exit(2)


def main() -> int:
    base = os.environ.get("BASE_URL", "http://127.0.0.1:8000").rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    headers = {"Origin": os.environ["ORIGIN"]} if os.environ.get("ORIGIN") else None
    sent = {}

    def remember_body(request):
        # The exact bytes of the vendor-parameter call, for the other side.
        if request.url.path.endswith("/chat/completions"):
            body = request.read()
            if b'"top_k"' in body:
                sent["vendor"] = body

    client = openai.OpenAI(
        base_url=base,
        api_key=os.environ.get("API_KEY", "none"),
        default_headers=headers,
        max_retries=0,
        timeout=30,
        http_client=httpx.Client(event_hooks={"request": [remember_body]}),
    )
    failures = []
    skipped = []
    passed = []

    def check(name, fn):
        try:
            detail = fn()
        except Skip as s:
            skipped.append(name)
            print(f"skip {name}: {s}")
        except Exception as e:  # report every failure, then exit non-zero
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        else:
            passed.append(name)
            print(f"ok   {name}: {detail}")

    state = {}

    def model():
        return state.get("model", "default")

    def user(text):
        return [{"role": "user", "content": text}]

    def models():
        ids = [m.id for m in client.models.list()]
        assert ids, "empty model list"
        state["model"] = os.environ.get("MODEL") or ids[0]
        state["ids"] = ids
        return ids

    def retrieve():
        m = client.models.retrieve(model())
        assert m.id == model() and m.object == "model", repr(m)
        return f"{m.id} owned by {m.owned_by}"

    def retrieve_slash():
        slashed = [i for i in state.get("ids", []) if "/" in i]
        if not slashed:
            raise Skip("no listed model id holds a /")
        m = client.models.retrieve(slashed[0])
        assert m.id == slashed[0], repr(m)
        return m.id

    def retrieve_unknown():
        try:
            client.models.retrieve("no-such-model-anywhere")
        except openai.NotFoundError as e:
            assert e.status_code == 404, e.status_code
            return "NotFoundError 404"
        raise AssertionError("an unknown model was found")

    def plain():
        r = client.chat.completions.create(model=model(), messages=user("Say hello"))
        text = r.choices[0].message.content
        assert isinstance(text, str) and text, f"no content in {r!r}"
        assert r.choices[0].message.role == "assistant", repr(r)
        return repr(text)

    def streamed():
        stream = client.chat.completions.create(
            model=model(),
            messages=user("Say hello slowly"),
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = []
        chunks = 0
        usage = None
        for chunk in stream:
            chunks += 1
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        text = "".join(parts)
        assert text, "no streamed content"
        assert usage is not None and usage.total_tokens > 0, "no usage chunk"
        return f"{chunks} chunks, {text!r}, {usage.total_tokens} tokens"

    def streamed_without_usage():
        # portcullis asks the upstream for usage (its token accounting)
        # and must not hand the extra chunk to a client that did not ask:
        # every chunk keeps its choice, none carries usage.
        chunks = list(
            client.chat.completions.create(
                model=model(), messages=user("Say hello"), stream=True
            )
        )
        assert chunks, "no chunks"
        assert all(c.choices for c in chunks), "a chunk without choices reached the client"
        assert all(c.usage is None for c in chunks), "a usage chunk reached the client"
        return f"{len(chunks)} chunks, none with usage"

    def stream_helper():
        completions = client.chat.completions
        if not hasattr(completions, "stream"):
            completions = getattr(getattr(client, "beta", None), "chat", None)
            completions = getattr(completions, "completions", None)
            if completions is None or not hasattr(completions, "stream"):
                raise Skip("this SDK has no chat.completions.stream() helper")
        deltas = []
        with completions.stream(model=model(), messages=user("Say hello")) as stream:
            for event in stream:
                if event.type == "content.delta":
                    deltas.append(event.delta)
            final = stream.get_final_completion()
        text = final.choices[0].message.content
        assert text and text == "".join(deltas), f"{text!r} vs {deltas!r}"
        assert final.choices[0].message.role == "assistant", repr(final)
        return f"{len(deltas)} deltas, {text!r}"

    def completion():
        r = client.completions.create(model=model(), prompt="Say hello")
        text = r.choices[0].text
        assert r.object == "text_completion" and text, repr(r)
        return repr(text)

    def completion_stream():
        parts = []
        for chunk in client.completions.create(model=model(), prompt="Say hello", stream=True):
            if chunk.choices:
                parts.append(chunk.choices[0].text)
        text = "".join(parts)
        assert text, "no streamed text"
        return repr(text)

    def embeddings():
        r = client.embeddings.create(model=model(), input=["first", "second"])
        assert [d.index for d in r.data] == [0, 1], repr(r)
        assert all(d.embedding and isinstance(d.embedding[0], float) for d in r.data), repr(r)
        return f"{len(r.data)} vectors of {len(r.data[0].embedding)}"

    def response():
        r = client.responses.create(model=model(), input="Say hello")
        assert r.object == "response" and r.output_text, repr(r)
        return repr(r.output_text)

    def response_stream():
        types = []
        parts = []
        for event in client.responses.create(model=model(), input="Say hello", stream=True):
            types.append(event.type)
            if event.type == "response.output_text.delta":
                parts.append(event.delta)
        assert types[0] == "response.created", types
        assert types[-1] == "response.completed", types
        assert "".join(parts), "no streamed text"
        return f"{len(types)} events, {''.join(parts)!r}"

    def response_stream_helper():
        if not hasattr(client.responses, "stream"):
            raise Skip("this SDK has no responses.stream() helper")
        deltas = []
        with client.responses.stream(model=model(), input="Say hello") as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            final = stream.get_final_response()
        assert final.output_text and final.output_text == "".join(deltas), (
            f"{final.output_text!r} vs {deltas!r}"
        )
        return f"{len(deltas)} deltas, {final.output_text!r}"

    def response_stream_closed_early():
        word = os.environ.get("CANCEL_WORD", "cancel")
        stream = client.responses.create(model=model(), input=f"{word} after the first words", stream=True)
        seen = []
        for event in stream:
            seen.append(event.type)
            if event.type == "response.output_text.delta":
                break
        stream.close()
        assert seen[-1] == "response.output_text.delta", seen
        return f"closed after {len(seen)} events"

    def error_mapping():
        try:
            client.chat.completions.create(model=model(), messages=[])
        except openai.BadRequestError as e:
            assert e.status_code == 400, e.status_code
            body = e.body if isinstance(e.body, dict) else {}
            code = body.get("code") or (body.get("error") or {}).get("code")
            assert code == "validation_failed", f"code {code!r} in {e.body!r}"
            return f"BadRequestError 400 {code}"
        raise AssertionError("an empty messages list was accepted")

    def upstream_refusal():
        word = os.environ.get("REFUSE_WORD")
        if not word:
            raise Skip("REFUSE_WORD is not set")
        expected = os.environ.get("REFUSE_MESSAGE", "")
        # The SDK's default retries: a refusal must not be retried.
        retrying = client.with_options(max_retries=2)
        try:
            retrying.chat.completions.create(model=model(), messages=user(f"please {word}"))
        except openai.BadRequestError as e:
            body = e.body if isinstance(e.body, dict) else {}
            body = body.get("error", body)
            assert body.get("code") == "upstream_rejected", repr(e.body)
            assert expected in (body.get("message") or ""), f"{expected!r} not in {e.body!r}"
            assert expected in str(e), f"{expected!r} not in {e}"
            return f"BadRequestError 400: {body.get('message')!r}"
        raise AssertionError("the refusal was not raised as BadRequestError")

    def unknown_path():
        try:
            client.post("/no/such/route", cast_to=object, body={})
        except openai.NotFoundError as e:
            assert "/v1/no/such/route" in str(e), str(e)
            return f"NotFoundError: {e.message}"
        raise AssertionError("an unknown /v1 path answered")

    def vendor_parameters():
        r = client.chat.completions.create(
            model=model(),
            messages=user("Answer yes"),
            extra_body={"top_k": 40, "grammar": 'root ::= "yes"'},
        )
        assert r.choices[0].message.content, repr(r)
        assert "vendor" in sent, "the request body was not seen"
        print(f"vendor-body: {sent['vendor'].hex()}")
        return f"{len(sent['vendor'])} bytes sent"

    checks = [
        ("models.list", models),
        ("models.retrieve", retrieve),
        ("models.retrieve (id with /)", retrieve_slash),
        ("models.retrieve (unknown)", retrieve_unknown),
        ("chat.completions (plain)", plain),
        ("chat.completions (stream)", streamed),
        ("chat.completions (stream, usage not asked)", streamed_without_usage),
        ("chat.completions.stream()", stream_helper),
        ("completions (plain)", completion),
        ("completions (stream)", completion_stream),
        ("embeddings", embeddings),
        ("responses (plain)", response),
        ("responses (stream)", response_stream),
        ("responses.stream()", response_stream_helper),
        ("responses (stream closed early)", response_stream_closed_early),
        ("error mapping", error_mapping),
        ("upstream refusal", upstream_refusal),
        ("unknown path", unknown_path),
        ("vendor parameters", vendor_parameters),
    ]
    for name, fn in checks:
        check(name, fn)
    total = len(passed) + len(failures)
    print(f"openai {openai.__version__}: {len(passed)}/{total} checks passed, {len(skipped)} skipped")
    return 1 if failures else 0


class Skip(Exception):
    """A check the installed SDK or the environment cannot run."""


if __name__ == "__main__":
    sys.exit(main())
