// Admin chores for the local broker, run with the broker's own jars as a single-file Java
// program (`java -cp '.kafka/lib/*' LocalKafkaAdmin.java …`): no Kafka CLI distribution needed.
//
//   wait SECONDS               until the broker answers a metadata request (exit 1 on timeout)
//   create-topics PARTITIONS [SUFFIX]   the default topics of DESIGN.md (each name + SUFFIX, e.g.
//                                       "-demo-1" for a demo run); existing ones are left alone
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
                case "wait" -> System.exit(waitReady(admin, Integer.parseInt(args[1])) ? 0 : 1);
                case "create-topics" -> createTopics(admin, Integer.parseInt(args[1]), args.length > 2 ? args[2] : "");
                default -> {
                    System.err.println("usage: LocalKafkaAdmin wait SECONDS | create-topics PARTITIONS [SUFFIX]");
                    System.exit(2);
                }
            }
        }
    }

    static boolean waitReady(Admin admin, int seconds) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (System.nanoTime() < deadline) {
            try {
                int nodes = admin.describeCluster().nodes().get(3, TimeUnit.SECONDS).size();
                admin.listTopics().names().get(3, TimeUnit.SECONDS);
                if (nodes > 0) return true;
            } catch (Exception notYet) {
                Thread.sleep(300);
            }
        }
        return false;
    }

    static void createTopics(Admin admin, int partitions, String suffix) throws Exception {
        Map<String, Map<String, String>> topics = new LinkedHashMap<>();
        topics.put("trait-events", Map.of());
        topics.put("segment-status", Map.of());
        topics.put("segment-status-batch", Map.of());
        // The qualifier's state: one record per user, the latest wins.
        topics.put("qualifier-changelog", Map.of("cleanup.policy", "compact"));
        // Dead letters wait for `delivery replay`; time must not delete them.
        topics.put("segment-status-dlq", Map.of("retention.ms", "-1"));
        // One record per user, destination and request attempt, for `delivery log`: 7 days.
        topics.put("delivery-log", Map.of("retention.ms", "604800000"));
        for (var topic : topics.entrySet()) {
            String name = topic.getKey() + suffix;
            NewTopic newTopic = new NewTopic(name, partitions, (short) 1).configs(topic.getValue());
            try {
                admin.createTopics(List.of(newTopic)).all().get(10, TimeUnit.SECONDS);
                System.out.println("created topic " + name + " (" + partitions + " partitions)");
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) throw e;
                System.out.println("topic " + name + " exists");
            }
        }
    }
}
