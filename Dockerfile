# One image for every Snooze role; the compose file picks the role by command.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc pkg-config libvirt-dev libvirt-clients ipmitool \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/snooze
COPY pyproject.toml README.md ./
COPY snooze ./snooze
COPY bootstrap ./bootstrap
COPY groupmanager ./groupmanager
COPY localcontroller ./localcontroller
COPY configs ./configs
RUN pip install --no-cache-dir .
EXPOSE 5000-5010/tcp 5000-5010/udp
