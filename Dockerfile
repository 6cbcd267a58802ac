# chatpool container image: build with cargo, run as a non-root user.
#
# The image contains only the chatpool binary (the driver is pure Rust and
# talks to PostgreSQL over plain TCP, so no libpq or OpenSSL is needed). It has
# no PostgreSQL: set DATABASE_URL (docker-compose.yml runs the database as a
# separate service).

# ---- build ---------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock diesel.toml ./
COPY migrations ./migrations
COPY src ./src
# Cargo.toml declares the load bench by path: the manifest must find it.
COPY benches ./benches
RUN cargo build --release --locked

# ---- run -----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /home/chatpool --shell /usr/sbin/nologin chatpool
COPY --from=builder /build/target/release/chatpool /usr/local/bin/chatpool

USER chatpool
WORKDIR /home/chatpool
ENV CHATPOOL_LISTEN=0.0.0.0:8080
EXPOSE 8080

# chatpool drains on SIGTERM (sockets get Close 1001, in-flight requests
# finish, the pool is closed) within CHATPOOL_SHUTDOWN_TIMEOUT_MS (10 s by
# default): give the container longer than that to stop (compose:
# stop_grace_period, docker stop: --time).
STOPSIGNAL SIGTERM

# No curl in the image: bash's /dev/tcp asks GET /readyz on the port of
# CHATPOOL_LISTEN and succeeds on a 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${CHATPOOL_LISTEN##*:} && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["chatpool"]
CMD ["serve"]
