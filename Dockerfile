# One image for the five functions; each Knative Service picks its function with the
# environment variable FUNCTION_TARGET (tasks, recurrence, sweep, notify or activity), and
# Knative sets PORT. The same image runs the database migrations: `duetide-migrate` (the Job in
# deploy/base/migrate.yaml sets it as the command).
#
#   docker build -t ghcr.io/<you>/duetide:<version> .
#   docker run --rm -e FUNCTION_TARGET=tasks -e PORT=8080 -p 8080:8080 ghcr.io/<you>/duetide:<version>
#
# Dependencies come from requirements.lock (scripts/lock updates it). scripts/image-check
# builds this image and runs the migration and each function against PostgreSQL.

FROM python:3.11-slim AS build
# The classic builder keeps this stage as an untagged image; the label lets
# scripts/image-check remove the ones earlier builds left.
LABEL duetide.stage=build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The dependencies first, from the lock (scripts/lock writes it): every file checked
# against its sha256, wheels only, so nothing unpinned is downloaded or built. This layer
# is reused until a lock file changes.
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/duetide \
    && /opt/duetide/bin/pip install --require-hashes --only-binary :all: --no-deps \
        -r requirements.lock -r requirements-build.lock
# The runtime package only (non-editable): pyproject.toml, its README and shared/duetide;
# the developer tooling (shared/tools) stays out of the image. Built with the locked
# setuptools (no build isolation: that would fetch an unpinned one), without dependencies
# (all locked above); `pip check` fails the build if the lock misses one.
COPY pyproject.toml README.md ./
COPY shared/duetide/ shared/duetide/
# pip and setuptools only install: nothing imports them at run time (25 MB), so they go.
RUN /opt/duetide/bin/pip install --no-deps --no-build-isolation . \
    && /opt/duetide/bin/pip check \
    && /opt/duetide/bin/pip uninstall --quiet --yes pip setuptools \
    && /opt/duetide/bin/python -m compileall -q /opt/duetide/lib

FROM python:3.11-slim
ENV PATH=/opt/duetide/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    # The runtime user has no passwd entry: without HOME, Docker's default is /, and
    # anything that keeps files "in the home directory" would try to write there.
    HOME=/tmp \
    # Local state only (the SQLite default, a generated JWT secret); production sets
    # DATABASE_URL and DUETIDE_JWT_SECRET, so nothing is written here.
    DUETIDE_HOME=/tmp/duetide
COPY --from=build /opt/duetide /opt/duetide
WORKDIR /app
COPY functions/ functions/
# Bytecode of the entry points, written now: the runtime user cannot write here.
RUN python -m compileall -q functions/
# Numeric, so that the kubelet can check the Services' runAsNonRoot.
USER 10001:10001
EXPOSE 8080
# duetide.web.serve runs functions-framework's app for the function behind uvicorn with
# bounded requests (see shared/duetide/web/serve.py). sh -c for the variables; exec so that
# the server gets SIGTERM.
ENTRYPOINT ["/bin/sh", "-c", "exec python -m duetide.web.serve --source \"functions/${FUNCTION_TARGET:?set FUNCTION_TARGET to tasks, recurrence, sweep, notify or activity}/main.py\" --target \"$FUNCTION_TARGET\" --host 0.0.0.0 --port \"${PORT:-8080}\""]
