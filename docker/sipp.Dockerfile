# SIPp (Debian's sip-tester) for the compose carrier stub and dialer load; scenarios are mounted from ../sipp.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends sip-tester \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10002 --home-dir /sipp --shell /usr/sbin/nologin sipp \
 && mkdir -p /sipp /logs && chown sipp /logs
USER sipp
WORKDIR /logs
ENTRYPOINT ["sipp"]
