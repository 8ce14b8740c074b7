// Produce records with kafkajs, consume them back, print what was read as
// JSON on stdout. Usage: node roundtrip.js <bootstrap> <topic> <count>
"use strict";
const { Kafka, logLevel } = require("kafkajs");

async function main() {
  const [bootstrap, topic, countText] = process.argv.slice(2);
  const count = Number(countText);
  const kafka = new Kafka({
    clientId: "ringbus-test",
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
  });

  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] });
  await admin.disconnect();

  const producer = kafka.producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) {
    messages.push({
      key: i % 4 === 0 ? null : `key-${i}`,
      value: `value-${i}`,
      headers: i % 3 === 0 ? { h: `${i}` } : {},
    });
  }
  await producer.send({ topic, acks: -1, messages });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `group-${topic}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("timed out consuming")), 60000);
    consumer
      .run({
        eachMessage: async ({ partition, message }) => {
          seen.push({
            partition,
            offset: message.offset,
            key: message.key === null ? null : message.key.toString(),
            value: message.value.toString(),
            headers: Object.fromEntries(
              Object.entries(message.headers || {}).map(([k, v]) => [k, v.toString()])
            ),
          });
          if (seen.length >= count) {
            clearTimeout(timer);
            resolve();
          }
        },
      })
      .catch(reject);
  });
  await consumer.disconnect();
  process.stdout.write(JSON.stringify(seen));
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
