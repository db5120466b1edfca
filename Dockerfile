# extauthz server, sync job and demo model server (one image, different commands).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY extauthz ./extauthz
RUN pip install --no-cache-dir . && useradd --system --uid 10001 extauthz
USER extauthz
ENTRYPOINT ["extauthz"]
CMD ["serve", "--listen", "0.0.0.0:9001"]
