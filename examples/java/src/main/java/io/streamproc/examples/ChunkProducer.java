package io.streamproc.examples;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import org.apache.avro.AvroRuntimeException;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Produces streamproc chunks from a JSON-lines file with kafka-clients and Apache Avro.
 *
 * <p>Follows the wire contract: each value is the chunk as a {@link GenericRecord} of {@code
 * avro/chunk.avsc} in Avro single-object encoding, written by Avro's own {@link
 * BinaryMessageEncoder} ({@code C3 01}, the CRC-64-AVRO fingerprint of the schema, the binary
 * body); chunks with {@code low_priority} go to {@code <prefix>.bulk}, the others to {@code
 * <prefix>.realtime}; the key is the chunk's stable id.
 *
 * <pre>
 * java -jar chunk-producer.jar --bootstrap-servers localhost:9092 --topic-prefix chunks \
 *     --input chunks.jsonl [--schema avro/chunk.avsc]
 * java -jar chunk-producer.jar --encode-to DIR --input chunks.jsonl
 * java -jar chunk-producer.jar --bootstrap-servers localhost:9092 --input chunks.jsonl \
 *     --transactional-id my-writer [--transaction-size 100] [--abort-every 5]
 * </pre>
 *
 * <p>With {@code --encode-to} it only encodes, writing the files the kcat example sends. With
 * {@code --transactional-id} it writes in transactions of {@code --transaction-size} chunks, the
 * way Kafka Streams or Connect with exactly-once write; {@code --abort-every N} aborts every N-th
 * transaction instead of committing it (to try what consumers make of aborted transactions).
 */
public final class ChunkProducer {

  /** UUIDv5 namespace of derived chunk keys (wire contract). */
  static final UUID CHUNK_KEY_NAMESPACE = UUID.fromString("a6624f05-2fa3-4f6c-868d-e1d9182bcea4");

  private static final ObjectMapper JSON =
      new ObjectMapper().enable(SerializationFeature.ORDER_MAP_ENTRIES_BY_KEYS);

  private ChunkProducer() {}

  public static void main(String[] args) throws Exception {
    try {
      run(parseOptions(args));
    } catch (IllegalArgumentException e) {
      fail(e.getMessage()); // bad input: the message says where, no stack trace needed
    }
  }

  private static void run(Map<String, String> options) throws Exception {
    String bootstrap =
        options.getOrDefault("bootstrap-servers", System.getenv("KAFKA_BOOTSTRAP_SERVERS"));
    String prefix = options.getOrDefault("topic-prefix", "chunks");
    Path schemaPath =
        options.containsKey("schema") ? Path.of(options.get("schema")) : defaultSchemaPath();
    String input = options.getOrDefault("input", "-");
    Schema schema = new Schema.Parser().parse(schemaPath.toFile());
    BinaryMessageEncoder<GenericRecord> encoder =
        new BinaryMessageEncoder<>(GenericData.get(), schema);
    List<GenericRecord> chunks = readChunks(schema, input);
    if (options.containsKey("encode-to")) {
      writeFiles(Path.of(options.get("encode-to")), encoder, chunks);
      System.out.printf("encoded %d chunks into %s%n", chunks.size(), options.get("encode-to"));
      return;
    }
    if (bootstrap == null || bootstrap.isEmpty()) {
      fail("--bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS) is required");
    }

    Properties config = new Properties();
    config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    config.put(ProducerConfig.ACKS_CONFIG, "all");
    config.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
    config.put(ProducerConfig.LINGER_MS_CONFIG, 5);
    config.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
    config.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
    if (options.containsKey("transactional-id")) {
      config.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, options.get("transactional-id"));
      produceInTransactions(
          config,
          prefix,
          encoder,
          chunks,
          positive(options.getOrDefault("transaction-size", "100"), "--transaction-size"),
          Integer.parseInt(options.getOrDefault("abort-every", "0")));
      return;
    }

    int realtime = 0;
    int bulk = 0;
    try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(config)) {
      List<Future<RecordMetadata>> sent = new ArrayList<>();
      for (GenericRecord chunk : chunks) {
        boolean lowPriority = (Boolean) chunk.get("low_priority");
        String topic = prefix + (lowPriority ? ".bulk" : ".realtime");
        sent.add(producer.send(new ProducerRecord<>(topic, key(chunk), encode(encoder, chunk))));
        if (lowPriority) {
          bulk++;
        } else {
          realtime++;
        }
      }
      producer.flush();
      for (Future<RecordMetadata> delivery : sent) {
        delivery.get(); // throws if the chunk was not acknowledged
      }
    } catch (ExecutionException e) {
      fail("delivery failed: " + e.getCause());
    }
    System.out.printf("produced %d chunks: %d realtime, %d bulk%n", chunks.size(), realtime, bulk);
  }

  /**
   * Writes {@code chunks} in transactions of {@code size}; when {@code abortEvery} is above 0, every
   * {@code abortEvery}-th transaction is aborted after its records were written.
   */
  static void produceInTransactions(
      Properties config,
      String prefix,
      BinaryMessageEncoder<GenericRecord> encoder,
      List<GenericRecord> chunks,
      int size,
      int abortEvery)
      throws Exception {
    int transactions = 0;
    int aborted = 0;
    int realtime = 0;
    int bulk = 0;
    try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(config)) {
      producer.initTransactions();
      for (int start = 0; start < chunks.size(); start += size) {
        List<GenericRecord> batch = chunks.subList(start, Math.min(chunks.size(), start + size));
        producer.beginTransaction();
        List<Future<RecordMetadata>> sent = new ArrayList<>();
        int batchRealtime = 0;
        for (GenericRecord chunk : batch) {
          boolean lowPriority = (Boolean) chunk.get("low_priority");
          String topic = prefix + (lowPriority ? ".bulk" : ".realtime");
          sent.add(producer.send(new ProducerRecord<>(topic, key(chunk), encode(encoder, chunk))));
          batchRealtime += lowPriority ? 0 : 1;
        }
        producer.flush();
        for (Future<RecordMetadata> delivery : sent) {
          delivery.get(); // throws if a record was not written
        }
        transactions++;
        if (abortEvery > 0 && transactions % abortEvery == 0) {
          producer.abortTransaction();
          aborted++;
        } else {
          producer.commitTransaction();
          realtime += batchRealtime;
          bulk += batch.size() - batchRealtime;
        }
      }
    } catch (ExecutionException e) {
      fail("delivery failed: " + e.getCause());
    }
    System.out.printf(
        "produced %d chunks in %d transactions (%d aborted): %d realtime, %d bulk committed%n",
        chunks.size(), transactions, aborted, realtime, bulk);
  }

  private static int positive(String value, String option) {
    int parsed = Integer.parseInt(value);
    if (parsed < 1) {
      throw new IllegalArgumentException(option + ": must be at least 1");
    }
    return parsed;
  }

  /** The chunk in Avro single-object encoding, as Avro's {@link BinaryMessageEncoder} writes it. */
  static byte[] encode(BinaryMessageEncoder<GenericRecord> encoder, GenericRecord chunk)
      throws IOException {
    ByteBuffer encoded = encoder.encode(chunk);
    byte[] value = new byte[encoded.remaining()];
    encoded.get(value);
    return value;
  }

  /**
   * Only encodes: one framed value per file and {@code manifest.tsv} of {@code
   * lane<TAB>key<TAB>file} lines, for tools such as kcat that send bytes they did not encode.
   */
  static void writeFiles(
      Path dir, BinaryMessageEncoder<GenericRecord> encoder, List<GenericRecord> chunks)
      throws IOException {
    Files.createDirectories(dir);
    StringBuilder manifest = new StringBuilder();
    for (int i = 0; i < chunks.size(); i++) {
      GenericRecord chunk = chunks.get(i);
      String key = key(chunk);
      if (key.contains("\t") || key.contains("\n") || key.contains("\r")) {
        throw new IllegalArgumentException(
            "chunk " + (i + 1) + ": key cannot go into a tab-separated manifest");
      }
      String name = String.format("%04d.avro", i + 1);
      Files.write(dir.resolve(name), encode(encoder, chunk));
      String lane = (Boolean) chunk.get("low_priority") ? "bulk" : "realtime";
      manifest.append(lane).append('\t').append(key).append('\t').append(name).append('\n');
    }
    Files.writeString(dir.resolve("manifest.tsv"), manifest, StandardCharsets.UTF_8);
  }

  /**
   * Finds {@code avro/chunk.avsc} in the working directory or the nearest parent that has one, so
   * the example runs from anywhere inside the repository.
   */
  static Path defaultSchemaPath() {
    Path relative = Path.of("avro", "chunk.avsc");
    for (Path dir = Path.of("").toAbsolutePath(); dir != null; dir = dir.getParent()) {
      if (Files.isRegularFile(dir.resolve(relative))) {
        return dir.resolve(relative);
      }
    }
    return relative;
  }

  /** Reads one chunk per line (blank lines skipped) into records of {@code schema}. */
  static List<GenericRecord> readChunks(Schema schema, String input) throws IOException {
    List<GenericRecord> chunks = new ArrayList<>();
    try (BufferedReader reader =
        input.equals("-")
            ? new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))
            : Files.newBufferedReader(Path.of(input), StandardCharsets.UTF_8)) {
      String line;
      int number = 0;
      while ((line = reader.readLine()) != null) {
        number++;
        if (line.isBlank()) {
          continue;
        }
        try {
          chunks.add((GenericRecord) toAvro(schema, JSON.readTree(line), ""));
        } catch (IllegalArgumentException | IOException | AvroRuntimeException e) {
          throw new IllegalArgumentException("line " + number + ": " + e.getMessage(), e);
        }
      }
    }
    return chunks;
  }

  /**
   * Converts a JSON value to the Avro datum of {@code schema}, walking the schema. The one field
   * that is not a plain mapping is {@code metadata}: any JSON value, carried as compact JSON text
   * with sorted object keys.
   */
  static Object toAvro(Schema schema, JsonNode node, String path) {
    switch (schema.getType()) {
      case UNION:
        if (node == null || node.isNull()) {
          return null;
        }
        for (Schema branch : schema.getTypes()) {
          if (branch.getType() != Schema.Type.NULL) {
            return toAvro(branch, node, path);
          }
        }
        throw new IllegalArgumentException(path + ": no non-null branch in " + schema);
      case RECORD:
        require(node.isObject(), path, "an object");
        GenericRecordBuilder builder = new GenericRecordBuilder(schema);
        for (Iterator<String> names = node.fieldNames(); names.hasNext(); ) {
          String name = names.next();
          Schema.Field field = schema.getField(name);
          if (field == null) {
            throw new IllegalArgumentException(
                path + name + ": not a field of " + schema.getName());
          }
          JsonNode value = node.get(name);
          if (name.equals("metadata") && path.isEmpty()) {
            builder.set(field, value.isNull() ? null : canonicalJson(value));
          } else {
            builder.set(field, toAvro(field.schema(), value, path + name + "."));
          }
        }
        return builder.build(); // absent fields take their schema defaults
      case ARRAY:
        require(node.isArray(), path, "an array");
        List<Object> items = new ArrayList<>(node.size());
        for (JsonNode item : node) {
          items.add(toAvro(schema.getElementType(), item, path));
        }
        return items;
      case STRING:
        require(node.isTextual(), path, "a string");
        return node.textValue();
      case DOUBLE:
        require(node.isNumber(), path, "a number");
        return node.doubleValue();
      case BOOLEAN:
        require(node.isBoolean(), path, "a boolean");
        return node.booleanValue();
      default:
        throw new IllegalArgumentException(
            path + ": schema type " + schema.getType() + " is not mapped");
    }
  }

  private static void require(boolean condition, String path, String what) {
    if (!condition) {
      throw new IllegalArgumentException((path.isEmpty() ? "chunk" : path) + ": must be " + what);
    }
  }

  private static String canonicalJson(JsonNode value) {
    try {
      // Through plain Java maps so ORDER_MAP_ENTRIES_BY_KEYS sorts every object's keys.
      return JSON.writeValueAsString(JSON.treeToValue(value, Object.class));
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /**
   * The chunk's stable id: its {@code tracking_id} when set, else the UUIDv5 of the JSON array
   * {@code [dataset_id, chunk_html, link, semantic_content, fulltext_content]}.
   */
  static String key(GenericRecord chunk) {
    Object trackingId = chunk.get("tracking_id");
    if (trackingId != null && !trackingId.toString().isEmpty()) {
      return trackingId.toString();
    }
    StringBuilder identity = new StringBuilder("[");
    String[] fields = {"dataset_id", "chunk_html", "link", "semantic_content", "fulltext_content"};
    for (int i = 0; i < fields.length; i++) {
      if (i > 0) {
        identity.append(',');
      }
      appendPythonJsonString(identity, chunk.get(fields[i]));
    }
    return uuidV5(CHUNK_KEY_NAMESPACE, identity.append(']').toString()).toString();
  }

  /**
   * Appends a JSON string the way Python's {@code json.dumps} writes it by default: every
   * character outside printable ASCII as {@code \\uXXXX} (UTF-16 code units, so characters beyond
   * the Basic Multilingual Plane become surrogate pairs).
   */
  static void appendPythonJsonString(StringBuilder out, Object value) {
    if (value == null) {
      out.append("null");
      return;
    }
    out.append('"');
    String text = value.toString();
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      switch (c) {
        case '"' -> out.append("\\\"");
        case '\\' -> out.append("\\\\");
        case '\n' -> out.append("\\n");
        case '\r' -> out.append("\\r");
        case '\t' -> out.append("\\t");
        case '\b' -> out.append("\\b");
        case '\f' -> out.append("\\f");
        default -> {
          if (c >= ' ' && c <= '~') {
            out.append(c);
          } else {
            out.append(String.format("\\u%04x", (int) c));
          }
        }
      }
    }
    out.append('"');
  }

  /** RFC 4122 name-based UUID, version 5 (SHA-1); the JDK has only version 3 (MD5). */
  static UUID uuidV5(UUID namespace, String name) {
    MessageDigest sha1;
    try {
      sha1 = MessageDigest.getInstance("SHA-1");
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
    ByteBuffer namespaceBytes = ByteBuffer.allocate(16);
    namespaceBytes.putLong(namespace.getMostSignificantBits());
    namespaceBytes.putLong(namespace.getLeastSignificantBits());
    sha1.update(namespaceBytes.array());
    byte[] hash = sha1.digest(name.getBytes(StandardCharsets.UTF_8));
    hash[6] = (byte) ((hash[6] & 0x0f) | 0x50); // version 5
    hash[8] = (byte) ((hash[8] & 0x3f) | 0x80); // RFC 4122 variant
    ByteBuffer bits = ByteBuffer.wrap(hash, 0, 16);
    return new UUID(bits.getLong(), bits.getLong());
  }

  private static Map<String, String> parseOptions(String[] args) {
    Map<String, String> options = new HashMap<>();
    for (int i = 0; i < args.length; i++) {
      if (!args[i].startsWith("--") || i + 1 >= args.length) {
        fail(
            "usage: (--bootstrap-servers HOST:PORT [--topic-prefix chunks] | --encode-to DIR)"
                + " [--input FILE|-] [--schema FILE]"
                + " [--transactional-id ID [--transaction-size N] [--abort-every N]]");
      }
      options.put(args[i].substring(2), args[++i]);
    }
    return options;
  }

  private static void fail(String message) {
    System.err.println("chunk-producer: " + message);
    System.exit(1);
  }
}
