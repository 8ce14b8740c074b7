package dev.ringbus.javaclient;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.ConsumerGroupListing;
import org.apache.kafka.clients.admin.GroupListing;
import org.apache.kafka.clients.admin.MemberDescription;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.consumer.OffsetAndTimestamp;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Drives the unmodified Java Kafka client against one broker and prints what it saw as
 * JSON on stdout, for tests/integration/test_java_client.py to check.
 *
 * <p>Usage: {@code RoundTrip --bootstrap HOST:PORT --topic T --group G --records FILE
 * --partitions 3 --probe-times T1,T2,...}
 *
 * <p>Steps: Admin creates the topic; one default (idempotent, acks=all) producer per
 * codec sends the records of FILE and waits for every ack; a group consumer (default
 * assignors: range, cooperative-sticky) reads everything back and commits; Admin
 * describes and lists the group while the consumer is a member and after it left; a
 * second consumer with assign() asks offsetsForTimes for every probe time and reads
 * the record found for each.
 *
 * <p>FILE has one record per line, tab-separated: codec, timestamp (ms), key, value,
 * headers. Key and value are base64 or "-" for null; headers are comma-separated
 * name:value pairs, both base64, value "-" for null (an empty field: no headers).
 * Every byte field of the output is base64 too, so the test compares bytes exactly.
 *
 * <p>Every wait is bounded: the client calls take explicit timeouts and the whole run
 * gives up after --deadline-s seconds (default 100). Any failure exits with status 1
 * and a stack trace on stderr.
 */
public final class RoundTrip {

  private static final Duration CALL_TIMEOUT = Duration.ofSeconds(30);
  private static final Base64.Encoder B64 = Base64.getEncoder();
  private static final Base64.Decoder B64D = Base64.getDecoder();

  private final String bootstrap;
  private final String topic;
  private final String group;
  private final int partitions;
  private final long deadlineNanos;

  private RoundTrip(Map<String, String> options) {
    this.bootstrap = required(options, "bootstrap");
    this.topic = required(options, "topic");
    this.group = required(options, "group");
    this.partitions = Integer.parseInt(options.getOrDefault("partitions", "3"));
    long deadlineSeconds = Long.parseLong(options.getOrDefault("deadline-s", "100"));
    this.deadlineNanos = System.nanoTime() + TimeUnit.SECONDS.toNanos(deadlineSeconds);
  }

  /** One line of the records file. */
  private record Input(
      int index, String codec, long timestamp, byte[] key, byte[] value, RecordHeaders headers) {}

  public static void main(String[] args) {
    // stdout carries only the JSON document; everything else goes to stderr.
    PrintStream json = System.out;
    System.setOut(System.err);
    int status = 0;
    try {
      Map<String, String> options = parseOptions(args);
      RoundTrip run = new RoundTrip(options);
      List<Input> inputs = readInputs(Path.of(required(options, "records")));
      List<Long> probeTimes = new ArrayList<>();
      for (String text : options.getOrDefault("probe-times", "").split(",")) {
        if (!text.isEmpty()) {
          probeTimes.add(Long.parseLong(text));
        }
      }
      Map<String, Object> summary = run.execute(inputs, probeTimes);
      json.println(Json.write(summary));
      json.flush();
    } catch (Throwable failure) {
      failure.printStackTrace(System.err);
      status = 1;
    }
    // Client threads are closed by now; exit explicitly so a stuck one cannot hang us.
    System.exit(status);
  }

  private Map<String, Object> execute(List<Input> inputs, List<Long> probeTimes)
      throws Exception {
    Map<String, Object> summary = new LinkedHashMap<>();
    summary.put("topic", topic);
    summary.put("group", group);
    try (Admin admin = Admin.create(adminProperties())) {
      summary.put("topic_partitions", createTopic(admin));
      summary.put("produced", produce(inputs, summary));
      consumeInGroup(admin, inputs.size(), summary);
      summary.put("group_after_leave", describeGroup(admin));
      summary.put("listed_groups", listGroups(admin));
    }
    consumeAssigned(probeTimes, summary);
    return summary;
  }

  // ---------------------------------------------------------------- admin

  private Properties adminProperties() {
    Properties properties = new Properties();
    properties.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    properties.put(AdminClientConfig.CLIENT_ID_CONFIG, "ringbus-java-admin");
    properties.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
    return properties;
  }

  private int createTopic(Admin admin) throws Exception {
    NewTopic newTopic = new NewTopic(topic, partitions, (short) 1);
    admin.createTopics(List.of(newTopic)).all().get(remaining(), TimeUnit.MILLISECONDS);

    // Metadata may trail the create by a moment; ask until all partitions show.
    while (true) {
      TopicDescription description =
          admin
              .describeTopics(List.of(topic))
              .allTopicNames()
              .get(remaining(), TimeUnit.MILLISECONDS)
              .get(topic);
      if (description.partitions().size() == partitions) {
        return description.partitions().size();
      }
      pause(100);
    }
  }

  private Map<String, Object> describeGroup(Admin admin) throws Exception {
    ConsumerGroupDescription description =
        admin
            .describeConsumerGroups(List.of(group))
            .all()
            .get(remaining(), TimeUnit.MILLISECONDS)
            .get(group);
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("group_id", description.groupId());
    out.put("state", description.groupState().toString());
    out.put("type", description.type().toString());
    out.put("simple", description.isSimpleConsumerGroup());
    out.put("assignor", description.partitionAssignor());
    out.put("coordinator", description.coordinator() == null ? null : description.coordinator().id());
    List<Object> members = new ArrayList<>();
    for (MemberDescription member : description.members()) {
      Map<String, Object> entry = new LinkedHashMap<>();
      entry.put("member_id", member.consumerId());
      entry.put("client_id", member.clientId());
      entry.put("host", member.host());
      entry.put("assignment", partitionsOf(member.assignment().topicPartitions()));
      members.add(entry);
    }
    out.put("members", members);
    return out;
  }

  private Map<String, Object> listGroups(Admin admin) throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    Map<String, Object> consumerGroups = new TreeMap<>();
    Collection<ConsumerGroupListing> listings =
        admin.listConsumerGroups().all().get(remaining(), TimeUnit.MILLISECONDS);
    for (ConsumerGroupListing listing : listings) {
      consumerGroups.put(
          listing.groupId(), listing.groupState().map(Object::toString).orElse(null));
    }
    out.put("consumer_groups", consumerGroups);
    Map<String, Object> allGroups = new TreeMap<>();
    for (GroupListing listing :
        admin.listGroups().all().get(remaining(), TimeUnit.MILLISECONDS)) {
      allGroups.put(listing.groupId(), listing.protocol());
    }
    out.put("groups", allGroups);
    return out;
  }

  // ------------------------------------------------------------- producer

  private List<Object> produce(List<Input> inputs, Map<String, Object> summary)
      throws Exception {
    // One producer per codec, in the order the codecs first appear.
    Map<String, List<Input>> byCodec = new LinkedHashMap<>();
    for (Input input : inputs) {
      byCodec.computeIfAbsent(input.codec(), codec -> new ArrayList<>()).add(input);
    }
    List<Object> produced = new ArrayList<>();
    Map<String, Object> producerMetrics = new LinkedHashMap<>();
    for (Map.Entry<String, List<Input>> entry : byCodec.entrySet()) {
      String codec = entry.getKey();
      Properties properties = new Properties();
      properties.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
      properties.put(ProducerConfig.CLIENT_ID_CONFIG, "ringbus-java-producer-" + codec);
      properties.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, codec);
      properties.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
      properties.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
      // Everything else stays at the client's defaults: idempotence on, acks=all.
      try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(properties)) {
        List<Future<RecordMetadata>> acks = new ArrayList<>();
        for (Input input : entry.getValue()) {
          ProducerRecord<byte[], byte[]> record =
              new ProducerRecord<>(
                  topic, null, input.timestamp(), input.key(), input.value(), input.headers());
          acks.add(producer.send(record));
        }
        producer.flush();
        for (int i = 0; i < acks.size(); i++) {
          RecordMetadata metadata = acks.get(i).get(remaining(), TimeUnit.MILLISECONDS);
          Map<String, Object> ack = new LinkedHashMap<>();
          ack.put("index", entry.getValue().get(i).index());
          ack.put("codec", codec);
          ack.put("partition", metadata.partition());
          ack.put("offset", metadata.offset());
          ack.put("timestamp", metadata.timestamp());
          produced.add(ack);
        }
        producerMetrics.put(codec, producerCounters(producer.metrics()));
      }
    }
    summary.put("producer_metrics", producerMetrics);
    return produced;
  }

  /** The producer's own counts of retries, errors and idempotence state. */
  private static Map<String, Object> producerCounters(
      Map<MetricName, ? extends Metric> metrics) {
    Set<String> wanted =
        Set.of("record-retry-total", "record-error-total", "record-send-total");
    Map<String, Object> out = new TreeMap<>();
    for (Map.Entry<MetricName, ? extends Metric> entry : metrics.entrySet()) {
      MetricName name = entry.getKey();
      if (name.group().equals("producer-metrics") && wanted.contains(name.name())) {
        out.put(name.name(), ((Number) entry.getValue().metricValue()).doubleValue());
      }
    }
    return out;
  }

  // ------------------------------------------------------------ consumers

  private Properties consumerProperties(String clientId) {
    Properties properties = new Properties();
    properties.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    properties.put(ConsumerConfig.CLIENT_ID_CONFIG, clientId);
    properties.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    properties.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    properties.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    properties.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    return properties;
  }

  private void consumeInGroup(Admin admin, int expected, Map<String, Object> summary)
      throws Exception {
    Properties properties = consumerProperties("ringbus-java-group");
    properties.put(ConsumerConfig.GROUP_ID_CONFIG, group);
    // Assignors and protocol stay at the defaults (classic; range, cooperative-sticky).
    List<Object> assignments = new ArrayList<>();
    List<Object> read = new ArrayList<>();
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(properties)) {
      consumer.subscribe(
          List.of(topic),
          new ConsumerRebalanceListener() {
            @Override
            public void onPartitionsRevoked(Collection<TopicPartition> revoked) {}

            @Override
            public void onPartitionsAssigned(Collection<TopicPartition> assigned) {
              assignments.add(partitionsOf(assigned));
            }
          });
      while (read.size() < expected) {
        for (ConsumerRecord<byte[], byte[]> record : consumer.poll(pollTimeout())) {
          read.add(describeRecord(record));
        }
      }
      // A few more polls: a duplicate stored by the broker would show up here.
      for (int i = 0; i < 3; i++) {
        for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(300))) {
          read.add(describeRecord(record));
        }
      }
      consumer.commitSync(CALL_TIMEOUT);

      Set<TopicPartition> all = new HashSet<>();
      for (int p = 0; p < partitions; p++) {
        all.add(new TopicPartition(topic, p));
      }
      summary.put("group_read", read);
      summary.put("group_assignments", assignments);
      summary.put("committed", offsetsOf(consumer.committed(all, CALL_TIMEOUT)));
      summary.put("positions", positionsOf(consumer, all));
      summary.put("admin_committed", offsetsOf(
          admin.listConsumerGroupOffsets(group)
              .partitionsToOffsetAndMetadata()
              .get(remaining(), TimeUnit.MILLISECONDS)));
      summary.put("group_while_member", describeGroup(admin));
    }
  }

  private void consumeAssigned(List<Long> probeTimes, Map<String, Object> summary)
      throws Exception {
    List<TopicPartition> all = new ArrayList<>();
    for (int p = 0; p < partitions; p++) {
      all.add(new TopicPartition(topic, p));
    }
    try (KafkaConsumer<byte[], byte[]> consumer =
        new KafkaConsumer<>(consumerProperties("ringbus-java-assigned"))) {
      consumer.assign(all);
      summary.put("beginning_offsets", longsOf(consumer.beginningOffsets(all, CALL_TIMEOUT)));
      summary.put("end_offsets", longsOf(consumer.endOffsets(all, CALL_TIMEOUT)));

      List<Object> probes = new ArrayList<>();
      for (long probeTime : probeTimes) {
        Map<TopicPartition, Long> query = new HashMap<>();
        for (TopicPartition partition : all) {
          query.put(partition, probeTime);
        }
        Map<TopicPartition, OffsetAndTimestamp> found =
            consumer.offsetsForTimes(query, CALL_TIMEOUT);
        for (TopicPartition partition : all) {
          OffsetAndTimestamp hit = found.get(partition);
          Map<String, Object> probe = new LinkedHashMap<>();
          probe.put("time", probeTime);
          probe.put("partition", partition.partition());
          probe.put("offset", hit == null ? null : hit.offset());
          probe.put("timestamp", hit == null ? null : hit.timestamp());
          probe.put("record", hit == null ? null : readAt(consumer, partition, hit.offset()));
          probes.add(probe);
        }
      }
      summary.put("offsets_for_times", probes);
    }
  }

  /** The first record at or after ``offset`` of ``partition``, read after a seek. */
  private Map<String, Object> readAt(
      KafkaConsumer<byte[], byte[]> consumer, TopicPartition partition, long offset) {
    consumer.pause(consumer.assignment());
    consumer.resume(List.of(partition));
    consumer.seek(partition, offset);
    while (true) {
      for (ConsumerRecord<byte[], byte[]> record : consumer.poll(pollTimeout())) {
        if (record.partition() == partition.partition()) {
          return describeRecord(record);
        }
      }
    }
  }

  private static Map<String, Object> describeRecord(ConsumerRecord<byte[], byte[]> record) {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("partition", record.partition());
    out.put("offset", record.offset());
    out.put("timestamp", record.timestamp());
    out.put("timestamp_type", record.timestampType().toString());
    out.put("key", base64(record.key()));
    out.put("value", base64(record.value()));
    List<Object> headers = new ArrayList<>();
    for (Header header : record.headers()) {
      List<Object> pair = new ArrayList<>();
      pair.add(base64(header.key().getBytes(StandardCharsets.UTF_8)));
      pair.add(base64(header.value()));
      headers.add(pair);
    }
    out.put("headers", headers);
    return out;
  }

  private Map<String, Object> positionsOf(
      KafkaConsumer<byte[], byte[]> consumer, Set<TopicPartition> partitions) {
    Map<String, Object> out = new TreeMap<>();
    for (TopicPartition partition : partitions) {
      out.put(Integer.toString(partition.partition()), consumer.position(partition, CALL_TIMEOUT));
    }
    return out;
  }

  private static Map<String, Object> offsetsOf(Map<TopicPartition, OffsetAndMetadata> offsets) {
    Map<String, Object> out = new TreeMap<>();
    for (Map.Entry<TopicPartition, OffsetAndMetadata> entry : offsets.entrySet()) {
      OffsetAndMetadata value = entry.getValue();
      out.put(Integer.toString(entry.getKey().partition()), value == null ? null : value.offset());
    }
    return out;
  }

  private static Map<String, Object> longsOf(Map<TopicPartition, Long> offsets) {
    Map<String, Object> out = new TreeMap<>();
    for (Map.Entry<TopicPartition, Long> entry : offsets.entrySet()) {
      out.put(Integer.toString(entry.getKey().partition()), entry.getValue());
    }
    return out;
  }

  private static List<Object> partitionsOf(Collection<TopicPartition> partitions) {
    List<Object> out = new ArrayList<>();
    for (TopicPartition partition : partitions) {
      out.add(List.of(partition.topic(), partition.partition()));
    }
    return out;
  }

  // --------------------------------------------------------------- bounds

  private long remaining() {
    long left = TimeUnit.NANOSECONDS.toMillis(deadlineNanos - System.nanoTime());
    if (left <= 0) {
      throw new IllegalStateException("deadline passed");
    }
    return left;
  }

  private Duration pollTimeout() {
    return Duration.ofMillis(Math.min(500, remaining()));
  }

  private void pause(long millis) throws InterruptedException {
    Thread.sleep(Math.min(millis, remaining()));
  }

  // ---------------------------------------------------------------- input

  private static List<Input> readInputs(Path path) throws IOException {
    List<Input> inputs = new ArrayList<>();
    for (String line : Files.readAllLines(path, StandardCharsets.UTF_8)) {
      if (line.isEmpty()) {
        continue;
      }
      String[] fields = line.split("\t", -1);
      if (fields.length != 5) {
        throw new IllegalArgumentException("bad record line " + inputs.size() + ": " + line);
      }
      RecordHeaders headers = new RecordHeaders();
      if (!fields[4].isEmpty()) {
        for (String pair : fields[4].split(",", -1)) {
          String[] parts = pair.split(":", -1);
          if (parts.length != 2) {
            throw new IllegalArgumentException("bad header " + pair);
          }
          headers.add(new String(B64D.decode(parts[0]), StandardCharsets.UTF_8), bytes(parts[1]));
        }
      }
      inputs.add(
          new Input(
              inputs.size(),
              fields[0],
              Long.parseLong(fields[1]),
              bytes(fields[2]),
              bytes(fields[3]),
              headers));
    }
    return inputs;
  }

  private static byte[] bytes(String field) {
    return field.equals("-") ? null : B64D.decode(field);
  }

  private static String base64(byte[] bytes) {
    return bytes == null ? null : B64.encodeToString(bytes);
  }

  private static Map<String, String> parseOptions(String[] args) {
    Map<String, String> options = new HashMap<>();
    for (int i = 0; i < args.length; i += 2) {
      if (!args[i].startsWith("--") || i + 1 >= args.length) {
        throw new IllegalArgumentException("expected --name value pairs, got " + args[i]);
      }
      options.put(args[i].substring(2), args[i + 1]);
    }
    return options;
  }

  private static String required(Map<String, String> options, String name) {
    String value = options.get(name);
    if (value == null) {
      throw new IllegalArgumentException("missing --" + name);
    }
    return value;
  }

  /** A JSON writer for maps, lists, strings, numbers, booleans and null. */
  static final class Json {
    private Json() {}

    static String write(Object value) {
      StringBuilder out = new StringBuilder();
      append(out, value);
      return out.toString();
    }

    private static void append(StringBuilder out, Object value) {
      if (value == null) {
        out.append("null");
      } else if (value instanceof String text) {
        appendString(out, text);
      } else if (value instanceof Number || value instanceof Boolean) {
        out.append(value);
      } else if (value instanceof Map<?, ?> map) {
        out.append('{');
        boolean first = true;
        for (Map.Entry<?, ?> entry : map.entrySet()) {
          if (!first) {
            out.append(',');
          }
          first = false;
          appendString(out, String.valueOf(entry.getKey()));
          out.append(':');
          append(out, entry.getValue());
        }
        out.append('}');
      } else if (value instanceof List<?> list) {
        out.append('[');
        for (int i = 0; i < list.size(); i++) {
          if (i > 0) {
            out.append(',');
          }
          append(out, list.get(i));
        }
        out.append(']');
      } else {
        throw new IllegalArgumentException("cannot write " + value.getClass() + " as JSON");
      }
    }

    private static void appendString(StringBuilder out, String text) {
      out.append('"');
      for (int i = 0; i < text.length(); i++) {
        char c = text.charAt(i);
        if (c == '"' || c == '\\') {
          out.append('\\').append(c);
        } else if (c < 0x20) {
          out.append(String.format("\\u%04x", (int) c));
        } else {
          out.append(c);
        }
      }
      out.append('"');
    }
  }
}
