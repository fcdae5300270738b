# STAGE in a container: a multi-stage build (the Rust toolchain stays in the build stage) and a
# small Debian runtime running `stage` as an unprivileged user. How to run it — the seccomp
# profile io_uring needs, the memlock limit, volumes, ports — is in docs/deploy.md:
#
#   docker build -t stage .
#   docker run --rm -p 8081:8081 \
#       --security-opt seccomp=deploy/seccomp-stage.json --ulimit memlock=67108864 stage
#
# With no arguments the image serves the embedded example on 8081; mount a configuration and
# its scripts and pass `-c`:  docker run ... -v "$PWD/game:/etc/stage:ro" stage -c /etc/stage/stage.json

# --- build ------------------------------------------------------------------------------------
# The default build vendors LuaJIT, libcurl, OpenSSL and unixODBC (README "Licences"), so the
# Rust image's C compiler, make and perl are all the build needs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p stage \
    && install -D target/release/stage /out/stage

# --- run --------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: curl.so's https. ODBC drivers are loaded at run time from /etc/odbcinst.ini:
# add them with --build-arg EXTRA_PACKAGES="libsqliteodbc odbc-mariadb".
ARG EXTRA_PACKAGES=""
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates ${EXTRA_PACKAGES} \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/stage --create-home stage
COPY --from=build /out/stage /usr/local/bin/stage
# The working directory holds what the node writes: index.so files, lotus's embedded store,
# the `-s` suspend file's default place is next to the binary, so it is set here too.
WORKDIR /var/lib/stage
VOLUME ["/var/lib/stage"]
USER stage
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/stage", "-s", "/var/lib/stage/stage.stop"]
