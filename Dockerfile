# syntax=docker/dockerfile:1
# chatpool container image: build with cargo, run as a non-root user.
#
# The image holds only the chatpool binary (the driver and TLS are pure Rust:
# no libpq, no OpenSSL) and the system CA certificates (for
# sslmode=verify-full against a managed PostgreSQL). It has no PostgreSQL:
# set DATABASE_URL (docker-compose.yml runs the database as a service).

# ---- build ---------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build
# The whole context: .dockerignore lets in exactly what the crate needs, so
# this line never drifts from the crate's layout.
COPY . .
# Cache mounts keep the registry and the compiled dependencies between
# builds: a source change recompiles chatpool, not its ~270 dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked --bin chatpool \
    && cp target/release/chatpool /usr/local/bin/chatpool

# ---- run -----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/chatpool \
       --shell /usr/sbin/nologin chatpool
COPY --from=builder /usr/local/bin/chatpool /usr/local/bin/chatpool

USER 10001:10001
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
