"""Kafka wire protocol codec (sans-IO): frames, request decoding, response
encoding, error codes and the ApiVersions advertisement.

Modules:
- ``framing``: find size-prefixed frames in a receive buffer.
- ``codec``: request header/body decoding, response encoding into chunks
  (bytes plus ``FileRange`` markers for sendfile), and the client-side
  directions used by tests and load generators.
- ``schema`` / ``schemas_data``: Kafka's JSON message definitions as data.
- ``compiler``: per (message, version) decode/encode functions built from
  the schema.
- ``versions``: the advertised and accepted versions, ApiVersions responses.
- ``errors``: Kafka error codes; ``codec_errors``: the codec's exceptions.
- ``wire``: primitive types.

Nothing here imports asyncio, sockets, processes or metrics; the net
process's connection layer drives it.
"""
