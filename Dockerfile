# One image for web, worker and beat (see docker-compose.yml).
FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SKYPILOT_DISABLE_USAGE_COLLECTION=1 \
    SKYDECK_VAR_DIR=/app/var
RUN apt-get update && apt-get install -y --no-install-recommends rsync openssh-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN SECRET_KEY=build-only SKYDECK_PRODUCTION=true python manage.py collectstatic --noinput
RUN useradd --create-home skydeck && mkdir -p /app/var && chown skydeck /app/var
USER skydeck
EXPOSE 8000
CMD ["gunicorn", "skydeck_site.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
