# Echolia Sync: build the `echolia` binary, then run it alone on a slim Debian.

# ---- build ------------------------------------------------------------------
# rust:1-bookworm carries gcc, which libsql needs to compile its bundled C SQLite.
FROM rust:1-bookworm AS build
WORKDIR /src

# The whole context (trimmed by .dockerignore): the binary embeds schema/*.sql and
# projections/*.sql with include_str!, and Cargo checks every target the manifest
# names (tests/, benches/) and every workspace member (load/) even when building only
# the binary, which does not compile the members' dependencies.
COPY . .

RUN cargo build --release --locked --bin echolia

# ---- runtime ----------------------------------------------------------------
# Same Debian release as the build stage, so the glibc the binary links against is there.
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged user with a fixed uid, so volume ownership is stable across rebuilds.
# /data is created and owned before VOLUME: a new named volume starts as a copy of it.
RUN groupadd --system --gid 10001 echolia \
    && useradd --system --uid 10001 --gid echolia --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin echolia \
    && mkdir -p /data \
    && chown echolia:echolia /data

COPY --from=build /src/target/release/echolia /usr/local/bin/echolia

ENV DATA_DIR=/data \
    BIND_ADDR=0.0.0.0:8000 \
    ENVIRONMENT=production

EXPOSE 8000
VOLUME /data
USER echolia

# No HEALTHCHECK: the slim image has no curl/wget and the binary has no probe
# command yet. GET /health answers 200 or 503 for an external checker.

# SIGTERM (Docker's default stop signal) starts a graceful shutdown.
ENTRYPOINT ["/usr/local/bin/echolia"]
CMD ["serve"]
