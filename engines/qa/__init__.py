"""Plan quality assurance: gamma analysis of dose distributions and the QA report of a plan."""

from rtgrid.engines.qa.gamma import GammaError, GammaResult, gamma_3d
from rtgrid.engines.qa.report import QaReport, QaReportError, build_qa_report

__all__ = ["GammaError", "GammaResult", "QaReport", "QaReportError", "build_qa_report", "gamma_3d"]
