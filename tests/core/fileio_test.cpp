// Where reports go: this process's streams by name ("-", /dev/stdout, /dev/fd/N, links to them),
// FIFOs and devices written straight through; everything else through a temporary file and a
// rename, which must never replace one of the process's stream links.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "aim/core/error.h"
#include "aim/core/fileio.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path dir = fs::temp_directory_path() / ("aim_fileio_" + std::to_string(getpid()));
  TempDir() { fs::create_directories(dir); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string p(const std::string& name) const { return (dir / name).string(); }
};

TEST(FileIo, StreamNamesAreTheirDescriptors) {
  TempDir t;
  EXPECT_EQ(process_stream_fd("-"), 1);
  EXPECT_EQ(process_stream_fd("/dev/stdin"), 0);
  EXPECT_EQ(process_stream_fd("/dev/stdout"), 1);
  EXPECT_EQ(process_stream_fd("/dev/stderr"), 2);
  EXPECT_EQ(process_stream_fd("/dev/fd/7"), 7);
  EXPECT_EQ(process_stream_fd("/proc/self/fd/3"), 3);
  EXPECT_EQ(process_stream_fd("/proc/" + std::to_string(getpid()) + "/fd/4"), 4);
  EXPECT_EQ(process_stream_fd("/dev/./stdout"), 1);
  // Another process's descriptors, and names that only look alike, are files.
  EXPECT_EQ(process_stream_fd("/proc/1/fd/1"), getpid() == 1 ? 1 : -1);
  for (const std::string& other : {"/dev/fd/", "/dev/fd/1x", "/dev/stdout2", "--", "", "out.json"})
    EXPECT_EQ(process_stream_fd(other), -1) << other;
  // Links to them, directly and through a chain (relative targets resolved from the link's folder).
  fs::create_symlink("/proc/self/fd/1", t.p("to_stdout"));
  fs::create_symlink("to_stdout", t.p("chain"));
  fs::create_symlink("/dev/stderr", t.p("to_stderr"));
  EXPECT_EQ(process_stream_fd(t.p("to_stdout")), 1);
  EXPECT_EQ(process_stream_fd(t.p("chain")), 1);
  EXPECT_EQ(process_stream_fd(t.p("to_stderr")), 2);
  std::ofstream(t.p("file.json")) << "{}";
  fs::create_symlink("file.json", t.p("to_file"));
  EXPECT_EQ(process_stream_fd(t.p("file.json")), -1);
  EXPECT_EQ(process_stream_fd(t.p("to_file")), -1);
  fs::create_symlink("loop_b", t.p("loop_a"));
  fs::create_symlink("loop_a", t.p("loop_b"));
  EXPECT_EQ(process_stream_fd(t.p("loop_a")), -1);
}

TEST(FileIo, ARenameNeverReplacesAStreamLink) {
  TempDir t;
  // Whatever standard output is open on (a regular file when redirected), its name is refused.
  for (const std::string& name : {std::string("/dev/stdout"), std::string("-"), t.p("to_stdout")}) {
    if (name == t.p("to_stdout")) fs::create_symlink("/proc/self/fd/1", name);
    try {
      refuse_unreplaceable(name);
      ADD_FAILURE() << name << " was not refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("this process's standard output"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
    EXPECT_THROW(write_text_atomic(name, "x"), Error) << name;
    EXPECT_THROW(check_output_path("--out", name), Error) << name;
  }
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(t.p("to_stdout"))));
  try {
    check_output_path("--out", "/dev/fd/2");
    ADD_FAILURE() << "/dev/fd/2 was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--out /dev/fd/2: names this process's standard error"), std::string::npos)
        << e.what();
  }
}

TEST(FileIo, AReportGoesStraightToAStreamAndAtomicallyToAFile) {
  TempDir t;
  const std::string text = "{\n  \"fid\": 2.56\n}\n";
  // A descriptor by name: one end of a pipe.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const std::string by_name = "/dev/fd/" + std::to_string(fds[1]);
  EXPECT_TRUE(is_stream_output(by_name));
  EXPECT_NO_THROW(check_report_path("--json", by_name));
  write_report(by_name, text);
  ::close(fds[1]);
  std::string got(text.size() + 16, '\0');
  const ssize_t n = ::read(fds[0], got.data(), got.size());
  ::close(fds[0]);
  ASSERT_GT(n, 0);
  EXPECT_EQ(got.substr(0, static_cast<size_t>(n)), text);
  // The descriptor stays open: write_report does not close what it did not open.
  int again[2];
  ASSERT_EQ(::pipe(again), 0);
  const std::string second = "/dev/fd/" + std::to_string(again[1]);
  write_report(second, "a");
  write_report(second, "b");
  ::close(again[1]);
  char two[4] = {};
  EXPECT_EQ(::read(again[0], two, sizeof(two)), 2);
  EXPECT_EQ(std::string(two, 2), "ab");
  ::close(again[0]);

  // A FIFO, read by another thread, and a link to it.
  const std::string fifo = t.p("report.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  fs::create_symlink(fifo, t.p("to_fifo"));
  for (const std::string& target : {fifo, t.p("to_fifo")}) {
    std::string read_back;
    std::thread reader([&] {
      std::ifstream in(fifo);
      std::stringstream ss;
      ss << in.rdbuf();
      read_back = ss.str();
    });
    EXPECT_TRUE(is_stream_output(target));
    EXPECT_NO_THROW(check_report_path("--json", target));
    write_report(target, text);
    reader.join();
    EXPECT_EQ(read_back, text) << target;
    EXPECT_TRUE(fs::is_fifo(fifo));
  }
  // A device.
  EXPECT_TRUE(is_stream_output("/dev/null"));
  EXPECT_NO_THROW(write_report("/dev/null", text));

  // A file: replaced whole (a link there is replaced, not written through).
  const std::string file = t.p("sub/report.json");
  EXPECT_FALSE(is_stream_output(file));
  EXPECT_NO_THROW(check_report_path("--json", file));
  write_report(file, text);
  std::ifstream in(file);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), text);
  EXPECT_THROW(check_report_path("--json", t.dir.string()), Error);
}

TEST(FileIo, AStreamThatCannotTakeTheReportIsRefusedBeforeTheWork) {
  auto refused = [](const std::string& path, const std::string& needle) {
    try {
      check_report_path("--json", path);
      ADD_FAILURE() << path << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--json " + path + ": " + needle), std::string::npos) << e.what();
    }
  };
  refused("/dev/stdin", "names this process's standard input");
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  refused("/dev/fd/" + std::to_string(fds[0]), "descriptor " + std::to_string(fds[0]) + " is open for reading only");
  EXPECT_NO_THROW(check_report_path("--json", "/dev/fd/" + std::to_string(fds[1])));
  ::close(fds[0]);
  ::close(fds[1]);
  refused("/dev/fd/" + std::to_string(fds[1]), "descriptor " + std::to_string(fds[1]) + " is not open");
}

}  // namespace
}  // namespace aim
