# hoinghi: self-hosted WebRTC SFU.
#
# Build:  docker build -t hoinghi .
# Run (recommended, Linux hosts): host networking, so ICE candidates carry the host's
# real addresses and no UDP port mapping is needed:
#   docker run -d --name hoinghi --network host -v hoinghi-data:/data hoinghi
#
# Run with published ports instead: media uses UDP ports from the rtc_port_min..max range
# (40000-40999 in this image, HOINGHI_RTC_PORT_MIN/MAX); publish the same range and tell
# the server which address sites must send media to:
#   docker run -d --name hoinghi \
#     -p 8080:8080/tcp -p 40000-40999:40000-40999/udp \
#     -e HOINGHI_ANNOUNCE_IP=<address of the Docker host as seen by sites> \
#     -v hoinghi-data:/data hoinghi
#
# Join links: docker exec hoinghi hoinghi token --meeting demo --site hub --role hub
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOINGHI_DATA_DIR=/data \
    HOINGHI_RTC_PORT_MIN=40000 \
    HOINGHI_RTC_PORT_MAX=40999

WORKDIR /app

# Dependencies first, in their own layer, so editing the code does not re-download
# aiortc/av/opencv wheels. The package directories are created empty just to satisfy
# the package discovery in pyproject.toml for this layer.
COPY pyproject.toml ./
RUN mkdir -p server media signaling loadtest \
    && touch server/__init__.py loadtest/__init__.py \
    && pip install . \
    && pip uninstall -y hoinghi \
    && rm -rf server media signaling loadtest build *.egg-info

COPY setup.py ./
COPY server ./server
COPY media ./media
COPY signaling ./signaling
COPY loadtest ./loadtest
COPY web-client ./web-client
COPY scripts ./scripts
# The native per-copy forwarding path (media/_fastpath.c) is compiled here; the compiler is
# removed again, the built module stays. Without it hoinghi falls back to the Python path.
RUN apt-get update -qq \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-deps -e . \
    && python -c 'import media.fastpath as f; assert f.NATIVE, "native forwarding path not built"' \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

# Unprivileged user; the data volume holds the database and the token signing secret.
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin hoinghi \
    && mkdir -p /data && chown hoinghi:hoinghi /data
USER hoinghi
VOLUME ["/data"]

EXPOSE 8080/tcp
# Media: UDP, every ICE socket inside HOINGHI_RTC_PORT_MIN..MAX (media/network.py).
EXPOSE 40000-40999/udp
# docker stop sends SIGTERM: sites are told the server restarts and rejoin by themselves.
STOPSIGNAL SIGTERM

CMD ["hoinghi", "serve", "--host", "0.0.0.0"]
