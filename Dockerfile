FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY cli cli
COPY mcp_tools mcp_tools
COPY commands commands
COPY events events
COPY projections projections
COPY queries queries
COPY infra infra
RUN pip install .
USER nobody
