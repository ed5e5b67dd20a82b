# buy-tracker: multi-stage build. The builder compiles a release binary; the runtime image holds
# only that binary, runs as a non-root user, and checks /health.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY assets ./assets
COPY bench ./bench
RUN cargo build --release --locked --bin buy-tracker

FROM debian:bookworm-slim
# curl for the HEALTHCHECK; nothing else is needed (SQLite is compiled into the binary).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/buy-tracker --create-home buy-tracker
COPY --from=builder /src/target/release/buy-tracker /usr/local/bin/buy-tracker
USER buy-tracker
WORKDIR /var/lib/buy-tracker
ENV BUY_TRACKER_HOST=0.0.0.0 \
    BUY_TRACKER_PORT=8080 \
    DATABASE_URL=sqlite:/var/lib/buy-tracker/data/buy-tracker.db
VOLUME ["/var/lib/buy-tracker/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
# SIGTERM (docker stop) shuts down gracefully: every acknowledged buy is committed first.
STOPSIGNAL SIGTERM
ENTRYPOINT ["buy-tracker"]
