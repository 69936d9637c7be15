# syntax=docker/dockerfile:1
# vpc-members in a container. Build from the checkout (BuildKit, Docker's default builder since
# 23.0, for the RUN --mount lines):
#
#     docker build -t vpc-members:0.2.0 .
#     docker run --rm -v vpc-members:/var/lib/vpc-members -v "$PWD/servers.csv:/in/servers.csv:ro" \
#         -e HUAWEICLOUD_SDK_AK -e HUAWEICLOUD_SDK_SK \
#         vpc-members:0.2.0 sync /in/servers.csv --region cn-north-4 --prune --max-prune 20
#
# Credentials come from the environment at run time (`-e NAME` passes the caller's value
# without putting it on the command line); nothing secret is built into the image.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Fixed, numeric ids: Kubernetes can only check runAsNonRoot against a numeric USER, and a
# volume's owner (a host directory, fsGroup) is set by number.
RUN groupadd --system --gid 10001 vpc-members \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin vpc-members \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/vpc-members

# The dependencies alone first, read from pyproject.toml, so that a change to the code reuses
# this layer. Wheels only: the image has no compiler, and a dependency without a wheel for
# this platform should fail the build rather than compile something nobody tested. The
# versions are pinned in deploy/constraints.txt.
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/src/pyproject.toml \
    --mount=type=bind,source=deploy/constraints.txt,target=/tmp/src/constraints.txt \
    --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print(*tomllib.load(open('/tmp/src/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install --only-binary=:all: -c /tmp/src/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself, pure Python, built from the checkout through a bind mount so the source
# is not left behind in a layer (rw: pip builds in the tree; those writes are discarded).
# pip compiles the .pyc files here; PYTHONDONTWRITEBYTECODE keeps Python from trying to
# write more at run time, on what is often a read-only root filesystem.
RUN --mount=type=bind,target=/tmp/src,rw \
    --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps --only-binary=:all: /tmp/src \
    && vpc-members --version

# Reports, run directories and the lock live on this volume. A run creates
# /var/lib/vpc-members/reports itself (0700), so the volume's root may be group-writable, as
# Kubernetes makes it with fsGroup; the reports directory itself must not be.
ENV VPC_MEMBERS_REPORTS_DIR=/var/lib/vpc-members/reports
WORKDIR /var/lib/vpc-members
VOLUME ["/var/lib/vpc-members"]

USER 10001:10001

# No init process: during run and sync the CLI handles SIGTERM itself (it drains requests in
# flight for --drain-timeout, writes the reports, exits 143), and it starts no children.
ENTRYPOINT ["vpc-members"]
CMD ["--help"]
