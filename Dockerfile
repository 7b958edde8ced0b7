# syntax=docker/dockerfile:1
#
# voiceagent service image.
#
#   docker build -t voiceagent .                       # this machine's architecture
#   sam/build-images.sh                                # linux/arm64 or amd64, pushed to ECR
#   docker run --rm -p 127.0.0.1:3000:3000 --env-file .env voiceagent
#
# Stage 1 installs the dependencies exactly as locked (requirements/service.lock.txt: every
# version pinned, every file's sha256 checked) and then the project, without resolving anything
# again, into a virtual environment; stage 2 copies only that environment onto a clean base, so
# no compiler, cache or source tree ends up in the image. docs/dependencies.md says how to
# change a dependency (requirements/lock.sh) or the base.
#
# The base is pinned to a patch release and to the digest of its multi-platform index (one
# digest for linux/amd64 and linux/arm64), the same in both stages: a rebuild gets the same
# base until the pin is moved on purpose (a Python or Debian security release). To move it:
#   docker/pin-base-image.sh [3.11.N]
# reads `docker buildx imagetools inspect python:3.11.N-slim-bookworm` and rewrites both FROMs.
# Base digest: from public Dockerfiles that pin python:3.11.17-slim-bookworm to it
# (MortyYJT/commerce-support-agent, Damel91/flower-mcp); not yet read from Docker Hub here.

FROM python:3.11.17-slim-bookworm@sha256:2333bd330d12de02514770b3585cad313644316047cdee24a7acfdece6de6efb AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# The dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements/service.lock.txt ./requirements/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --require-hashes -r requirements/service.lock.txt

# Then the project itself (see .dockerignore: the image never contains the tests). pip check
# fails the build if pyproject.toml asks for something the lock does not have.
COPY pyproject.toml README.md ./
COPY config ./config
COPY actors ./actors
COPY voiceagent ./voiceagent
RUN /opt/venv/bin/python -m pip install --no-deps . \
 && /opt/venv/bin/python -m pip check \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools \
 && /opt/venv/bin/voiceagent --help > /dev/null


FROM python:3.11.17-slim-bookworm@sha256:2333bd330d12de02514770b3585cad313644316047cdee24a7acfdece6de6efb AS runtime

LABEL org.opencontainers.image.title="voiceagent" \
      org.opencontainers.image.description="Phone agents on Twilio ConversationRelay and Amazon Bedrock" \
      org.opencontainers.image.licenses="MIT"

# Settings the image fixes; everything else comes from the environment at run time (see
# .env.example). LOG_FORMAT=json: one JSON object per line for CloudWatch.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=3000 \
    LOG_FORMAT=json \
    DATA_DIR=/var/lib/voiceagent

# A fixed numeric uid/gid, so Kubernetes-style runAsNonRoot checks and volume ownership work.
RUN groupadd --system --gid 10001 voiceagent \
 && useradd --system --uid 10001 --gid voiceagent --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin voiceagent \
 && install -d -o voiceagent -g voiceagent -m 0750 /var/lib/voiceagent

COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/voiceagent-entrypoint

# The SAM task mounts an empty volume at /tmp (its root file system is read-only). Fargate
# makes such a volume root-owned 0755, which user 10001 cannot write, unless the image
# declares the path as a VOLUME: then it copies this folder's mode (1777, as in the base).
RUN chmod 1777 /tmp
VOLUME ["/tmp"]

USER 10001:10001
WORKDIR /var/lib/voiceagent
EXPOSE 3000

# `voiceagent serve` drains on SIGTERM (the entrypoint forwards it to every worker). Give it
# time: docker stop -t 120, ECS stopTimeout 120.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '3000'), timeout=4)"]

ENTRYPOINT ["/usr/local/bin/voiceagent-entrypoint"]
CMD ["voiceagent", "serve"]
