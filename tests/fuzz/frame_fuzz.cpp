// libFuzzer target: the replication wire format on arbitrary bytes. The frame
// decoder on a raw stream split anywhere, every message decoder (reached
// directly, past the checksums), and lz4/zstd decompression with an exact size
// never crash; whatever decodes re-encodes to the very same bytes; every error
// carries a code and a message.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "icbd/replicator/compression.hpp"
#include "frame_codec.hpp"
#include "messages.hpp"

using namespace icbd;
using namespace icbd::repl;

namespace {

// One per process, as a receiver keeps one per thread (and a fresh zstd
// context per input would dominate the run time).
Decompressor g_decompressor;

void check_error(const Status& s) {
    if (s.is_ok() || s.code() == 0 || s.message().empty()) std::abort();
}

// A decoded message is canonical: encoding it again gives the payload it came
// from, and its DATA chunks decompress to exactly their length or fail cleanly.
void check_message(FrameType type, ByteView payload) {
    Frame f{type, Bytes(payload.begin(), payload.end())};
    auto m = decode_message(f);
    if (!m) {
        check_error(m.status());
        return;
    }
    auto again = std::visit([](const auto& x) { return make_frame(x); }, *m);
    if (!again) std::abort();
    if (again->size() != kFrameHeaderSize + payload.size() ||
        !std::equal(payload.begin(), payload.end(), again->begin() + kFrameHeaderSize))
        std::abort();
    if (auto* d = std::get_if<Data>(&*m); d && d->compression != Compression::none) {
        std::vector<uint8_t> out(d->length);
        Status s = g_decompressor.decompress(d->compression, d->bytes, out);
        if (!s) check_error(s);
    }
}

// Feeds `stream` in pieces whose sizes come from `splits`, draining frames.
void run_decoder(ByteView stream, ByteView splits, uint32_t max_payload) {
    FrameDecoder dec(max_payload);
    size_t pos = 0, k = 0;
    while (pos < stream.size()) {
        size_t n = splits.empty() ? stream.size() : 1 + splits[k++ % splits.size()] % 64;
        n = std::min(n, stream.size() - pos);
        dec.feed(stream.subspan(pos, n));
        pos += n;
        while (true) {
            auto f = dec.next();
            if (!f) {
                check_error(f.status());
                if (dec.finish().is_ok()) std::abort();  // errors are sticky
                return;
            }
            if (!f->has_value()) break;
            if ((*f)->payload.size() > max_payload) std::abort();
            check_message((*f)->type, (*f)->payload);
        }
    }
    Status s = dec.finish();
    if (!s) check_error(s);
}

const FrameType kTypes[] = {FrameType::hello,      FrameType::offer,          FrameType::need,  FrameType::file,
                            FrameType::data,       FrameType::hole,           FrameType::truncate, FrameType::del,
                            FrameType::checkpoint, FrameType::checkpoint_ack, FrameType::end,   FrameType::result,
                            FrameType::error,      FrameType::route,          FrameType::children};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    ByteView in(data + 1, size - 1);
    uint8_t mode = data[0];
    switch (mode % 4) {
    case 0:
        // A raw stream: checksums, lengths, types as they come.
        run_decoder(in, in.first(std::min<size_t>(in.size(), 8)), mode & 0x80 ? 4096 : kMaxPayload);
        break;
    case 1: {
        // Records <type index, u16 length, payload> wrapped in valid frames:
        // the decoder sees good checksums and the message decoders get fuzzed
        // payloads through the whole path.
        Bytes stream;
        size_t pos = 0;
        while (pos + 3 <= in.size()) {
            FrameType t = kTypes[in[pos] % std::size(kTypes)];
            size_t n = std::min<size_t>(in[pos + 1] | in[pos + 2] << 8, in.size() - pos - 3);
            auto f = encode_frame(t, in.subspan(pos + 3, n));
            if (!f) std::abort();
            stream.insert(stream.end(), f->begin(), f->end());
            pos += 3 + n;
        }
        run_decoder(stream, in.first(std::min<size_t>(in.size(), 8)), kMaxPayload);
        break;
    }
    case 2:
        // One payload straight into one message decoder.
        if (!in.empty()) check_message(kTypes[in[0] % std::size(kTypes)], in.subspan(1));
        break;
    case 3: {
        // Decompression with a claimed size (up to 1 MiB) that may lie.
        if (in.size() < 3) return 0;
        size_t claimed = (static_cast<size_t>(in[0]) | in[1] << 8 | (in[2] & 0x0f) << 16) + 1;
        Compression c = (mode & 0x40) ? Compression::zstd : Compression::lz4;
        std::vector<uint8_t> out(claimed);
        Status s = g_decompressor.decompress(c, in.subspan(3), out);
        if (!s) check_error(s);
        break;
    }
    }
    return 0;
}
