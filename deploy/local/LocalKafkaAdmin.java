// Admin chores for the local broker, run with the broker's own jars as a single-file Java
// program (`java -cp '.kafka/lib/*' LocalKafkaAdmin.java …`): no Kafka CLI distribution needed.
//
//   wait SECONDS [NODES]       until the cluster answers a metadata request and lists NODES nodes
//                              (default 1; exit 1 on timeout)
//   create-topics PARTITIONS [SUFFIX]   the default topics of DESIGN.md (each name + SUFFIX, e.g.
//                                       "-demo-1" for a demo run), KAFKA_REPLICATION replicas
//                                       (default 1); existing ones are left alone
//   transaction ID             "<coordinator node id> <state>" of a transactional id (the chaos
//                              runs kill the qualifier's coordinator mid-transaction)
//   transactions               every transactional id the cluster knows, its state and producer id
//   group-offsets GROUP        a group's committed offsets as a read_committed consumer sees them
//                              (fails with UNSTABLE_OFFSET_COMMIT while a transaction holds them)
import java.util.*;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.errors.TopicExistsException;

public class LocalKafkaAdmin {
    public static void main(String[] args) throws Exception {
        String brokers = System.getenv().getOrDefault("KAFKA_BROKERS", "127.0.0.1:9092");
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "3000");
        try (Admin admin = Admin.create(props)) {
            switch (args.length > 0 ? args[0] : "") {
                case "wait" -> System.exit(waitReady(admin, Integer.parseInt(args[1]),
                        args.length > 2 ? Integer.parseInt(args[2]) : 1) ? 0 : 1);
                case "create-topics" -> createTopics(admin, Integer.parseInt(args[1]), args.length > 2 ? args[2] : "");
                case "group-offsets" -> {
                    // requireStable: what a read_committed consumer gets (an open transactional
                    // offset commit answers UNSTABLE_OFFSET_COMMIT until its transaction ends).
                    var options = new ListConsumerGroupOffsetsOptions().requireStable(true);
                    var offsets = admin.listConsumerGroupOffsets(args[1], options)
                            .partitionsToOffsetAndMetadata().get(10, TimeUnit.SECONDS);
                    offsets.forEach((tp, om) -> System.out.println(tp + " " + (om == null ? "-" : om.offset())));
                }
                case "transactions" -> {
                    for (var listing : admin.listTransactions().all().get(10, TimeUnit.SECONDS)) {
                        System.out.println(listing.transactionalId() + " " + listing.state() + " producer " + listing.producerId());
                    }
                }
                case "transaction" -> {
                    // 15 s, not the 3 s default: a fresh JVM on two loaded cores (three brokers
                    // and the services under load, the chaos run C2) did not get its first
                    // metadata within 3 s, ten looks in a row.
                    var options = new DescribeTransactionsOptions().timeoutMs(15_000);
                    TransactionDescription t = admin.describeTransactions(List.of(args[1]), options)
                            .description(args[1]).get(20, TimeUnit.SECONDS);
                    System.out.println(t.coordinatorId() + " " + t.state());
                }
                default -> {
                    System.err.println("usage: LocalKafkaAdmin wait SECONDS [NODES] | create-topics PARTITIONS [SUFFIX] | transaction ID");
                    System.exit(2);
                }
            }
        }
    }

    static boolean waitReady(Admin admin, int seconds, int want) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (System.nanoTime() < deadline) {
            try {
                int nodes = admin.describeCluster().nodes().get(3, TimeUnit.SECONDS).size();
                admin.listTopics().names().get(3, TimeUnit.SECONDS);
                if (nodes >= want) return true;
                Thread.sleep(300);
            } catch (Exception notYet) {
                Thread.sleep(300);
            }
        }
        return false;
    }

    static void createTopics(Admin admin, int partitions, String suffix) throws Exception {
        short replication = Short.parseShort(System.getenv().getOrDefault("KAFKA_REPLICATION", "1"));
        Map<String, Map<String, String>> topics = new LinkedHashMap<>();
        topics.put("trait-events", Map.of());
        topics.put("segment-status", Map.of());
        topics.put("segment-status-batch", Map.of());
        // The qualifier's state: one record per user, the latest wins.
        topics.put("qualifier-changelog", Map.of("cleanup.policy", "compact"));
        // Dead letters wait for `delivery replay`; time must not delete them.
        topics.put("segment-status-dlq", Map.of("retention.ms", "-1"));
        // Each request attempt, its users by partition, for `delivery log`: 7 days.
        topics.put("delivery-log", Map.of("retention.ms", "604800000"));
        for (var topic : topics.entrySet()) {
            String name = topic.getKey() + suffix;
            NewTopic newTopic = new NewTopic(name, partitions, replication).configs(topic.getValue());
            try {
                admin.createTopics(List.of(newTopic)).all().get(10, TimeUnit.SECONDS);
                System.out.println("created topic " + name + " (" + partitions + " partitions, " + replication + " replicas)");
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) throw e;
                System.out.println("topic " + name + " exists");
            }
        }
    }
}
