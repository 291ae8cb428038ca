# Build: docker build -t knutepunkt .   (used by docker-compose.yml)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p knutepunkt --bin knutepunkt

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /var/lib/knutepunkt knutepunkt \
    && mkdir -p /var/lib/knutepunkt && chown knutepunkt /var/lib/knutepunkt && chmod 0700 /var/lib/knutepunkt
COPY --from=build /src/target/release/knutepunkt /usr/local/bin/knutepunkt
COPY knutepunkt.example.toml /etc/knutepunkt/knutepunkt.toml
USER knutepunkt
ENV KNUTEPUNKT_DATA_DIR=/var/lib/knutepunkt \
    KNUTEPUNKT_GRPC_ADDR=0.0.0.0:50051 \
    KNUTEPUNKT_HTTP_ADDR=0.0.0.0:8080 \
    KNUTEPUNKT_LOG_FORMAT=json
VOLUME /var/lib/knutepunkt
EXPOSE 50051 8080
# The CA of the hub's certificate, for the health check (mounted with the certificates).
ENV KNUTEPUNKT_PROBE_CA=/etc/knutepunkt/tls/ca.pem
HEALTHCHECK --interval=10s --timeout=3s CMD ["knutepunkt", "probe", "https://localhost:8080/readyz"]
ENTRYPOINT ["knutepunkt"]
CMD ["serve", "--config", "/etc/knutepunkt/knutepunkt.toml"]
