#!/usr/bin/env bash
# Fetches Apache Kafka's broker jars from Maven Central into tests/kafka/target/libs
# (idempotent). The Kafka test tier starts kafka.Kafka from them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ls "$here"/target/libs/kafka_2.13-*.jar >/dev/null 2>&1; then
  exit 0
fi
echo "fetching Apache Kafka jars from Maven Central (tests/kafka/pom.xml)..."
mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies
ls "$here"/target/libs/kafka_2.13-*.jar >/dev/null
