# Sourced by .ci/run and bench/run: makes sure a RabbitMQ broker answers on 127.0.0.1:5672,
# starting it (or installing it from Debian's packages first) when none does. Honours RABBITMQ_URL.

broker_answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

ensure_rabbitmq() {
  if [ -n "${RABBITMQ_URL:-}" ]; then
    echo "using the broker at RABBITMQ_URL"
    return
  fi
  if broker_answers; then
    echo "RabbitMQ answers on 127.0.0.1:5672"
  else
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
      echo "installing rabbitmq-server from Debian's packages"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    if ! broker_answers; then
      echo "starting rabbitmq-server"
      rabbitmq-server -detached || true
    fi
    for _ in $(seq 1 120); do broker_answers && break; sleep 1; done
  fi
  timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
  broker_answers || { echo "RabbitMQ did not start"; exit 1; }
}
