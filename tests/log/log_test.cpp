// The log API's promises: fields reach a fields sink, a LogScope names target
// and LUN in every line logged under it (tgtd's log) and adds its fields, a
// message-only sink keeps working, the journal entry carries each field once,
// and $JOURNAL_STREAM is believed only when it names stderr's own file.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "icbd/journal_log.hpp"
#include "icbd/log.hpp"

namespace icbd {
namespace {

struct Seen {
    LogLevel level;
    std::string message;
    LogFields fields;
};
std::vector<Seen> g_seen;
void fields_sink(LogLevel level, std::string_view message, const LogFields& fields) {
    g_seen.push_back({level, std::string(message), fields});
}
std::vector<std::string> g_lines;
void message_sink(LogLevel, const char* message) { g_lines.emplace_back(message); }

class LogTest : public ::testing::Test {
protected:
    void SetUp() override {
        g_seen.clear();
        g_lines.clear();
    }
    void TearDown() override { set_log_sink(nullptr); }
};

TEST_F(LogTest, FieldsReachAFieldsSink) {
    set_log_fields_sink(fields_sink);
    log(LogLevel::warning, "image 'win10' version 7: replica 'cache01' failed",
        {.image = "win10", .version = 7, .peer = "cache01"});
    ASSERT_EQ(g_seen.size(), 1u);
    EXPECT_EQ(g_seen[0].level, LogLevel::warning);
    EXPECT_EQ(g_seen[0].message, "image 'win10' version 7: replica 'cache01' failed");
    EXPECT_EQ(g_seen[0].fields.image, "win10");
    EXPECT_EQ(g_seen[0].fields.version, 7u);
    EXPECT_EQ(g_seen[0].fields.peer, "cache01");
    EXPECT_TRUE(g_seen[0].fields.client.empty());
    EXPECT_FALSE(g_seen[0].fields.lun);
}

TEST_F(LogTest, OldCallsWithoutFieldsStillWork) {
    set_log_fields_sink(fields_sink);
    log(LogLevel::info, "plain");
    ASSERT_EQ(g_seen.size(), 1u);
    EXPECT_TRUE(g_seen[0].fields.empty());
    set_log_sink(message_sink);
    log(LogLevel::error, "to a message sink", {.client = "pc01"});
    ASSERT_EQ(g_lines.size(), 1u);
    EXPECT_EQ(g_lines[0], "to a message sink");
    EXPECT_EQ(g_seen.size(), 1u) << "set_log_sink replaces the fields sink";
}

// What tgtd's log shows of a LUN's messages: each names target and LUN, once.
TEST_F(LogTest, ScopeNamesTargetAndLunInEveryLine) {
    set_log_sink(message_sink);
    LogFields lun_fields{.target = "tid 3", .lun = 2};
    {
        LogScope scope(lun_fields, "tgt 3 lun 2");
        log(LogLevel::info, "cache '/ssd/pc01.cache': written back in 12 ms");
        log(LogLevel::error, "LUN 'tgt 3 lun 2': read at offset 0: Input/output error");
    }
    log(LogLevel::info, "after the scope");
    ASSERT_EQ(g_lines.size(), 3u);
    EXPECT_EQ(g_lines[0], "tgt 3 lun 2: cache '/ssd/pc01.cache': written back in 12 ms");
    EXPECT_EQ(g_lines[1], "LUN 'tgt 3 lun 2': read at offset 0: Input/output error") << "not named twice";
    EXPECT_EQ(g_lines[2], "after the scope");
}

TEST_F(LogTest, ScopeFieldsCompleteTheCallsFieldsAndNest) {
    set_log_fields_sink(fields_sink);
    LogFields outer_fields{.image = "win10", .target = "tid 1", .lun = 1};
    LogFields inner_fields{.target = "tid 2", .lun = 5};
    {
        LogScope outer(outer_fields, "");
        {
            LogScope inner(inner_fields, "tgt 2 lun 5");
            log(LogLevel::info, "x", {.image = "win11"});
        }
        log(LogLevel::info, "y");
    }
    ASSERT_EQ(g_seen.size(), 2u);
    EXPECT_EQ(g_seen[0].message, "tgt 2 lun 5: x");
    EXPECT_EQ(g_seen[0].fields.image, "win11") << "the call's own field wins";
    EXPECT_EQ(g_seen[0].fields.target, "tid 2");
    EXPECT_EQ(g_seen[0].fields.lun, 5u);
    EXPECT_EQ(g_seen[1].message, "y") << "an empty label adds no prefix";
    EXPECT_EQ(g_seen[1].fields.image, "win10");
    EXPECT_EQ(g_seen[1].fields.lun, 1u);
}

TEST(JournalFields, EntryHoldsMessagePriorityIdentifierAndEachSetField) {
    auto e = journal_fields(LogLevel::error, "client 'pc01': now on image 'win10' version 8",
                            {.image = "win10", .version = 8, .peer = "master", .client = "pc01",
                             .target = "iqn.2026-12.org.icbd:pc01", .lun = 1},
                            "blockd");
    std::vector<std::string> want = {"MESSAGE=client 'pc01': now on image 'win10' version 8",
                                     "PRIORITY=3",
                                     "SYSLOG_IDENTIFIER=blockd",
                                     "IMAGE=win10",
                                     "VERSION=8",
                                     "PEER=master",
                                     "CLIENT=pc01",
                                     "TARGET=iqn.2026-12.org.icbd:pc01",
                                     "LUN=1"};
    EXPECT_EQ(e, want);
    auto w = journal_fields(LogLevel::warning, "m", {}, "");
    EXPECT_EQ(w, (std::vector<std::string>{"MESSAGE=m", "PRIORITY=4"}));
    EXPECT_EQ(journal_fields(LogLevel::info, "m", {.version = 0}, "x")[1], "PRIORITY=6");
    auto v0 = journal_fields(LogLevel::info, "m", {.version = 0}, "x");
    EXPECT_NE(std::find(v0.begin(), v0.end(), "VERSION=0"), v0.end()) << "version 0 is a version";
}

TEST(JournalFields, MultiLineMessageStaysOneField) {
    auto e = journal_fields(LogLevel::info, "line 1\nline 2", {}, "t");
    EXPECT_EQ(e[0], "MESSAGE=line 1\nline 2");
}

TEST(PlainLine, LevelWordOnlyForWarningsAndErrors) {
    EXPECT_EQ(plain_line(LogLevel::info, "ready"), "ready");
    EXPECT_EQ(plain_line(LogLevel::warning, "slow"), "warning: slow");
    EXPECT_EQ(plain_line(LogLevel::error, "broken"), "error: broken");
}

TEST(JournalStream, MatchesOnlyTheFileOfThatDescriptor) {
    char path[] = "/tmp/icbd-log-test.XXXXXX";
    int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    ::unlink(path);
    struct stat st{};
    ASSERT_EQ(::fstat(fd, &st), 0);
    std::string mine = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
    std::string other_ino = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino + 1);
    std::string other_dev = std::to_string(st.st_dev + 1) + ":" + std::to_string(st.st_ino);
    EXPECT_TRUE(journal_stream_is(mine.c_str(), fd));
    EXPECT_FALSE(journal_stream_is(other_ino.c_str(), fd)) << "a child whose stderr went elsewhere";
    EXPECT_FALSE(journal_stream_is(other_dev.c_str(), fd));
    EXPECT_FALSE(journal_stream_is(nullptr, fd));
    EXPECT_FALSE(journal_stream_is("", fd));
    EXPECT_FALSE(journal_stream_is((mine + "x").c_str(), fd));
    EXPECT_FALSE(journal_stream_is(std::to_string(st.st_dev).c_str(), fd));
    EXPECT_FALSE(journal_stream_is(mine.c_str(), 9999)) << "a closed descriptor";
    ::close(fd);
}

}  // namespace
}  // namespace icbd
