// Reads ferry's MM2-compatible checkpoints with MirrorMaker 2's own client code, as existing Java tooling would.
// Usage: java -cp "<kafka lib>/*" tests/java/Mm2TranslateOffsets.java <target bootstrap> <source alias> <group>
// Prints one line per partition: "<topic> <partition> <offset>".
import java.time.Duration;
import java.util.Map;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.connect.mirror.RemoteClusterUtils;

public class Mm2TranslateOffsets {
    public static void main(String[] args) throws Exception {
        Map<String, Object> target = Map.of("bootstrap.servers", args[0]);
        Map<TopicPartition, OffsetAndMetadata> offsets =
            RemoteClusterUtils.translateOffsets(target, args[1], args[2], Duration.ofSeconds(30));
        offsets.entrySet().stream()
            .sorted(Map.Entry.comparingByKey(java.util.Comparator.comparing(TopicPartition::toString)))
            .forEach(e -> System.out.println(e.getKey().topic() + " " + e.getKey().partition() + " " + e.getValue().offset()));
    }
}
