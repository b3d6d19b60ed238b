# One image for web, worker and beat (see docker-compose.yml).
FROM python:3.12-slim
# Static files live in the image, not under /app/var: docker-compose.yml mounts a volume
# there, which would keep serving the first image's copy after an upgrade.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SKYPILOT_DISABLE_USAGE_COLLECTION=1 \
    SKYDECK_VAR_DIR=/app/var \
    SKYDECK_STATIC_ROOT=/app/staticfiles
RUN apt-get update && apt-get install -y --no-install-recommends rsync openssh-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN SECRET_KEY=build-only SKYDECK_PRODUCTION=true python manage.py collectstatic --noinput
RUN useradd --create-home skydeck && mkdir -p /app/var && chown -R skydeck /app/var
USER skydeck
EXPOSE 8000
# gunicorn's graceful stop (8 s) ends inside docker's 10 s between SIGTERM and SIGKILL.
CMD ["gunicorn", "skydeck_site.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--graceful-timeout", "8", "--access-logfile", "-"]
