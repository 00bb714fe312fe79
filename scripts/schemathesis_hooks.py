"""schemathesis hooks for scripts/schemathesis.sh: the media types the
document uses besides JSON.

- OHTTP messages and keys are opaque bytes (`format: binary`): sent as they
  are generated, read as a string of bytes.
- MessagePack answers of /sync/* are decoded and checked against the same
  schemas as JSON, with `bin` fields read as the base64 strings JSON carries.
"""

import base64

import msgpack
import schemathesis


@schemathesis.serializer("message/ohttp-req", "message/ohttp-chunked-req")
def ohttp(ctx, value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode()


@schemathesis.deserializer("application/ohttp-keys", "message/ohttp-res", "message/ohttp-chunked-res")
def opaque(ctx, response):
    return response.content.decode("latin-1")


def _as_json(value):
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_json(item) for item in value]
    return value


@schemathesis.deserializer("application/msgpack")
def messagepack(ctx, response):
    return _as_json(msgpack.unpackb(response.content, raw=False))
