# extauthz server, sync job and demo model server (one image, different commands).
# The base image is pinned to a release; the Python packages to requirements/runtime.lock
# (versions and hashes; scripts/lock.sh remakes it), extauthz itself with nothing more.
FROM python:3.11.9-slim-bookworm
WORKDIR /app
COPY requirements/runtime.lock ./requirements/
COPY scripts/proto-overlap.sh ./scripts/
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.lock \
    && bash scripts/proto-overlap.sh python requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY extauthz ./extauthz
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 extauthz
USER extauthz
ENTRYPOINT ["extauthz"]
CMD ["serve", "--listen", "0.0.0.0:9001"]
