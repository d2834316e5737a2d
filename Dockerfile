# Image of the cstore worker fleet (also runs `cstore schema apply` and Locust load tests).
#
#   docker build -t cstore:0.1.0 .                         # worker + schema + Locust
#   docker build --build-arg EXTRAS= -t cstore:0.1.0 .     # without Locust (smaller)
#   docker run --rm -e CSTORE_CONTACT_POINTS=db1,db2 -e CSTORE_PASSWORD … cstore:0.1.0 worker --model fraud
#
# Configuration comes at run time only (CSTORE_* variables, a mounted cstore.toml named by
# CSTORE_CONFIG, TLS files from a mounted Secret): nothing secret is baked in, and .dockerignore
# keeps local config files, keys and the development venv out of the build context.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=load
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# A self-contained virtual environment, copied whole into the runtime stage. The migrations ship
# inside the wheel. With Locust (the default), the load test's transaction simulator comes from the
# development package in dev/ too.
RUN python -m venv /opt/cstore/venv \
 && /opt/cstore/venv/bin/pip install ".${EXTRAS:+[$EXTRAS]}" \
 && if [ -n "${EXTRAS}" ] && [ -d locustfiles ]; then \
        /opt/cstore/venv/bin/pip install ./dev && cp -r locustfiles /opt/cstore/locustfiles; fi

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/cstore/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CSTORE_LOG_FORMAT=json
RUN groupadd --system --gid 10001 cstore \
 && useradd --system --uid 10001 --gid cstore --home-dir /home/cstore --create-home \
            --shell /usr/sbin/nologin cstore
COPY --from=build /opt/cstore /opt/cstore
WORKDIR /opt/cstore
USER 10001:10001
# /metrics, /healthz, /readyz
EXPOSE 9108
ENTRYPOINT ["cstore"]
CMD ["worker"]
